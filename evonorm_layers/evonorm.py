"""The EvoNorm layers of Liu, Brock, Simonyan & Le, "Evolving
Normalization-Activation Layers", NeurIPS 2020 (https://arxiv.org/abs/2004.02967).

Notation (see :mod:`evonorm_layers.layout` for the axes at each rank):
``s2_bwh`` batch variance, ``s2_wh`` instance variance, ``mu_wh`` instance
mean, ``s2_{wh,c/g}`` / ``mu_{wh,c/g}`` group variance / mean. All variances
are population variances, ``epsilon`` sits inside every square root, and every
layer ends with the per-channel affine ``* gamma + beta``.

B series (batch-dependent, Table 3; moving variance used at inference):

* EvoNorm-B0: ``x / max(sqrt(s2_bwh(x)), v1*x + sqrt(s2_wh(x)))``
* EvoNorm-B1: ``x / max(sqrt(s2_bwh(x)), (x + 1) * sqrt(mu_wh(x^2)))``
* EvoNorm-B2: ``x / max(sqrt(s2_bwh(x)), sqrt(mu_wh(x^2) - x))``

S series (batch-independent, Table 4):

* EvoNorm-S0: ``x * sigmoid(v1*x) / sqrt(s2_{wh,c/g}(x))``
* EvoNorm-S1: ``x * sigmoid(x) / sqrt(s2_{wh,c/g}(x))``
* EvoNorm-S2: ``x * sigmoid(x) / sqrt(mu_{wh,c/g}(x^2))``

``nonlinearity=False`` keeps the normalization and drops the nonlinear part:
B layers divide by the batch standard deviation ``sqrt(s2_bwh(x))``, S layers
by their group statistic (S0/S1 the group standard deviation, S2 the group
root mean square), as timm's "S0a" does. The authors' reference code instead
returns only ``x * gamma + beta`` there (no normalization at all), which leaves
projection shortcuts and the last norm of residual branches unnormalized; we
normalize so that swapping a norm for its EvoNorm keeps every site normalized.

The affine, conditional or not (see :mod:`evonorm_layers.affine`), is applied
to the whole expression, after the max of the B series and after the
division of the S series.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from evonorm_layers import affine as affine_lib
from evonorm_layers import base
from evonorm_layers import fused
from evonorm_layers import recompute
from evonorm_layers import statistics as stats_lib
from evonorm_layers.registry import register_norm_activation

_serializable = tf_keras.saving.register_keras_serializable(package="EvoNorm")


class _EvoNormB(base.BatchDependentNormActivation):
  """Shared part of the B series: batch std vs. an instance-dependent term.

  The elementwise part ``x / max(batch_std, instance_term) * gamma + beta``
  is recomputed in the backward pass (:mod:`evonorm_layers.recompute`)
  instead of keeping its intermediates: only the input and per-(sample,
  channel) statistics are stored, as for BatchNorm. The affine (conditional
  or not) comes after the max, as in the paper's formula.
  """

  moving_statistics = ("variance",)
  fused_kernels = True  # elementwise part by evonorm_layers.fused on CPU

  def normalize_activate(self, x, training, affine):
    layout = self.layout
    if not self.nonlinearity:
      variance = self.batch_or_moving(training, lambda: self._batch_variance(
          *stats_lib.instance_moments(x, layout)))["variance"]
      # gamma folded into the per-channel scale: only x is kept for backprop.
      return affine_lib.scale_shift(
          x, *affine.fold(tf.math.rsqrt(variance + self.epsilon)))
    mean, var = stats_lib.instance_moments(x, layout)
    variance = self.batch_or_moving(
        training, lambda: self._batch_variance(mean, var))["variance"]
    batch_std = tf.sqrt(variance + self.epsilon)
    extra = [self.channel_param(v) for v in self.extra_params()]
    if fused.use_fused(x, layout, training):
      family, operands = self.fused_operands(mean, var, *extra)
      return fused.apply(family, x, layout,
                         [batch_std, *operands, *affine.tensors()],
                         self.epsilon)

    def elementwise(x, batch_std, mean, var, gamma, beta, *extra):
      denominator = tf.maximum(batch_std,
                               self.instance_term(x, mean, var, *extra))
      return affine_lib.Affine(gamma, beta).apply(x / denominator)

    return recompute.elementwise(
        elementwise, x, batch_std, mean, var, *affine.tensors(), *extra)

  def extra_params(self):
    """Variables used by ``instance_term`` besides the statistics."""
    return ()

  def _batch_variance(self, mean, var):
    moments = stats_lib.batch_moments(mean, var,
                                      synchronized=self.synchronized)
    return {"variance": moments.variance}, moments.count

  def instance_term(self, x, mean, var, *extra):
    """The second argument of the max, from the instance moments of x."""
    raise NotImplementedError

  def fused_operands(self, mean, var, *extra):
    """``instance_term`` for the fused kernels (:mod:`evonorm_layers.fused`):
    the family and its operands between ``s`` and the affine."""
    raise NotImplementedError


@_serializable
@register_norm_activation("evonorm_b0")
class EvoNormB0(_EvoNormB):
  """EvoNorm-B0: ``x / max(sqrt(s2_bwh(x)), v1*x + sqrt(s2_wh(x))) * gamma + beta``.

  Variables: ``gamma``, ``beta``, ``v1`` (ones; only with ``nonlinearity``)
  and ``moving_variance``.
  See :class:`evonorm_layers.base.BatchDependentNormActivation` for
  ``momentum`` and ``synchronized``.
  """

  def create_variables(self):
    super().create_variables()
    if self.nonlinearity:  # v1 is part of the nonlinear term only
      self.v1 = self.add_channel_weight("v1", "ones")

  def extra_params(self):
    return (self.v1,)

  def instance_term(self, x, mean, var, v1):
    return v1 * x + tf.sqrt(var + self.epsilon)

  def fused_operands(self, mean, var, v1):
    return "BLinear", (v1, tf.sqrt(var + self.epsilon))


@_serializable
@register_norm_activation("evonorm_b1")
class EvoNormB1(_EvoNormB):
  """EvoNorm-B1: ``x / max(sqrt(s2_bwh(x)), (x + 1) sqrt(mu_wh(x^2))) * gamma + beta``."""

  def instance_term(self, x, mean, var):
    return (x + 1.0) * tf.sqrt(tf.square(mean) + var + self.epsilon)

  def fused_operands(self, mean, var):
    root = tf.sqrt(tf.square(mean) + var + self.epsilon)
    return "BLinear", (root, root)  # (x + 1) r = r x + r


@_serializable
@register_norm_activation("evonorm_b2")
class EvoNormB2(_EvoNormB):
  """EvoNorm-B2: ``x / max(sqrt(s2_bwh(x)), sqrt(mu_wh(x^2) - x)) * gamma + beta``.

  Reading of the formula: Table 3 of the paper prints the square root over
  ``mu_wh(x^2) - x``, and that is what this layer computes. The argument can
  be negative, so the square root is the search space's Sqrt primitive
  (Table 2), ``sign(z) * sqrt(|z| + epsilon)``; where it is negative the max
  picks the batch standard deviation. (timm reads the formula as
  ``sqrt(mu_wh(x^2)) - x``; that is a different layer.)
  """

  def instance_term(self, x, mean, var):
    second_moment = tf.square(mean) + var
    return stats_lib.signed_sqrt(second_moment - x, self.epsilon)

  def fused_operands(self, mean, var):
    return "BSqrt", (tf.square(mean) + var,)


class _EvoNormS(base.GroupedNormActivation):
  """Shared part of the S series: ``numerator(x) / group statistic``.

  The group statistic and the affine (conditional or not) fold into one
  per-(sample, channel) scale; the numerator is recomputed in the backward
  pass, so only ``x`` and small tensors are kept.
  """

  centered = True  # divide by the group std (S0, S1) or the group RMS (S2)
  fused_kernels = True  # elementwise part by evonorm_layers.fused on CPU

  def normalize_activate(self, x, training, affine):
    # Batch-independent: training only chooses the fused kernels.
    mean, var = stats_lib.instance_moments(x, self.layout)
    group_mean, group_var = stats_lib.group_moments(
        mean, var, self.layout, self.resolved_groups)
    denominator = group_var if self.centered else group_var + tf.square(
        group_mean)
    scale, shift = affine.fold(tf.math.rsqrt(denominator + self.epsilon))
    if not self.nonlinearity:
      return affine_lib.scale_shift(x, scale, shift)
    if shift is None:
      shift = tf.zeros((), tf.float32)
    extra = [self.channel_param(v) for v in self.extra_params()]
    if fused.use_fused(x, self.layout, training):
      slope = extra[0] if extra else tf.ones((), tf.float32)
      return fused.apply("SSigmoid", x, self.layout, [slope, scale, shift])
    return recompute.elementwise(
        lambda x, scale, shift, *extra: self.activation(x, *extra) * scale +
        shift, x, scale, shift, *extra)

  def extra_params(self):
    """Variables used by ``activation``."""
    return ()

  def activation(self, x):
    """``x * sigmoid(x)``; a layer whose activation differs must pass its
    sigmoid slope as the single extra parameter (the fused kernels compute
    ``x * sigmoid(slope * x)``)."""
    return x * tf.sigmoid(x)


@_serializable
@register_norm_activation("evonorm_s0")
class EvoNormS0(_EvoNormS):
  """EvoNorm-S0: ``x sigmoid(v1 x) / sqrt(s2_{wh,c/g}(x)) * gamma + beta``.

  Variables: ``gamma``, ``beta`` and ``v1`` (ones; only with
  ``nonlinearity``). ``groups`` defaults to 32.
  """

  def create_variables(self):
    if self.nonlinearity:  # v1 is part of the nonlinear term only
      self.v1 = self.add_channel_weight("v1", "ones")

  def extra_params(self):
    return (self.v1,)

  def activation(self, x, v1):
    return x * tf.sigmoid(v1 * x)


@_serializable
@register_norm_activation("evonorm_s1")
class EvoNormS1(_EvoNormS):
  """EvoNorm-S1: ``x sigmoid(x) / sqrt(s2_{wh,c/g}(x)) * gamma + beta``."""


@_serializable
@register_norm_activation("evonorm_s2")
class EvoNormS2(_EvoNormS):
  """EvoNorm-S2: ``x sigmoid(x) / sqrt(mu_{wh,c/g}(x^2)) * gamma + beta``."""

  centered = False
