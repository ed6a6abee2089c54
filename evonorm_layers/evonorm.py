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
from evonorm_layers import formulas
from evonorm_layers import fused
from evonorm_layers import recompute
from evonorm_layers import statistics as stats_lib
from evonorm_layers.registry import register_norm_activation

_serializable = tf_keras.saving.register_keras_serializable(package="EvoNorm")


def series_normalization(layer: base.NormActivation, x: tf.Tensor, training,
                         affine: affine_lib.Affine, *, batch_dependent: bool,
                         groups: int | None = None,
                         centered: bool = True) -> tf.Tensor:
  """What an EvoNorm is with ``nonlinearity=False``: ``x / sqrt(v + eps)``
  followed by the affine.

  ``v`` is the batch variance (moving in inference) for the B series
  (``batch_dependent``; ``layer`` is then a
  :class:`~evonorm_layers.base.BatchDependentNormActivation` with a moving
  ``variance``), else the variance over ``groups`` groups of channels, or
  their second moment when not ``centered`` (EvoNorm-S2). The searched
  layers use it too, so every ``nonlinearity=False`` site of a network is
  normalized the same way whichever EvoNorm it holds.
  """
  if batch_dependent:
    variance = layer.batch_or_moving_variance(
        training, lambda: stats_lib.instance_moments(x, layer.layout))
  else:
    variance = _group_statistic(
        *stats_lib.instance_moments(x, layer.layout), layer.layout, groups,
        centered)
  # gamma folded into the per-channel scale: only x is kept for backprop.
  return affine_lib.scale_shift(
      x, *affine.fold(tf.math.rsqrt(variance + layer.epsilon)))


def _group_statistic(mean, var, layout, groups: int, centered: bool):
  """The S series' denominator before its root: the group variance, or the
  group second moment when not ``centered``, per (sample, channel)."""
  group_mean, group_var = stats_lib.group_moments(mean, var, layout, groups)
  return group_var if centered else group_var + tf.square(group_mean)


def _elementwise(family: str, x, layout, training, operands,
                 epsilon: float = 0.0):
  """The family's formula (:mod:`evonorm_layers.formulas`) on ``x``: the
  fused CPU kernel where it runs, else the composite ops recomputed in the
  backward pass; either way only ``x`` and the small operands are kept.
  In inference the plain ops (what an exported graph serves: no custom
  gradient around them, nothing kept for a backward pass that rarely
  comes; autodiff still differentiates them)."""
  if fused.use_fused(x, layout, training):
    return fused.apply(family, x, layout, operands, epsilon)
  if training is not True:  # float32 arithmetic, as in training
    y = formulas.evaluate(family, tf.cast(x, tf.float32), operands, epsilon)
    return tf.cast(y, x.dtype)
  return recompute.elementwise(
      lambda x, *operands: formulas.evaluate(family, x, operands, epsilon),
      x, *operands)


class _EvoNormB(base.BatchDependentNormActivation):
  """Shared part of the B series: ``x / max(batch_std, instance term)``.

  Each layer gives its :mod:`evonorm_layers.formulas` family and operands
  (:meth:`elementwise_operands`); the elementwise part then runs as the
  fused CPU kernel, or as the family's formula recomputed in the backward
  pass (:mod:`evonorm_layers.recompute`) instead of keeping its
  intermediates: either way only the input and per-(sample, channel)
  statistics are stored, as for BatchNorm. The affine (conditional or not)
  comes after the max, as in the paper's formula.
  """

  moving_statistics = ("variance",)
  fused_kernels = True  # elementwise part by evonorm_layers.fused on CPU

  def normalize_activate(self, x, training, affine):
    if not self.nonlinearity:
      return series_normalization(self, x, training, affine,
                                  batch_dependent=True)
    mean, var = stats_lib.instance_moments(x, self.layout)
    variance = self.batch_or_moving_variance(training, lambda: (mean, var))
    family, operands = self.elementwise_operands(mean, var)
    return _elementwise(
        family, x, self.layout, training,
        [tf.sqrt(variance + self.epsilon), *operands, *affine.tensors()],
        self.epsilon)

  def elementwise_operands(self, mean, var):
    """The layer's :data:`evonorm_layers.formulas.FAMILIES` family and its
    operands after the batch standard deviation ``s``, from the instance
    moments of ``x``."""
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

  def elementwise_operands(self, mean, var):
    return "BLinear", (self.channel_param(self.v1),
                       tf.sqrt(var + self.epsilon))


@_serializable
@register_norm_activation("evonorm_b1")
class EvoNormB1(_EvoNormB):
  """EvoNorm-B1: ``x / max(sqrt(s2_bwh(x)), (x + 1) sqrt(mu_wh(x^2))) * gamma + beta``."""

  def elementwise_operands(self, mean, var):
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

  def elementwise_operands(self, mean, var):
    return "BSqrt", (tf.square(mean) + var,)  # m = mu_wh(x^2)


class _EvoNormS(base.GroupedNormActivation):
  """Shared part of the S series: ``x * sigmoid(a*x) / group statistic``.

  The group statistic and the affine (conditional or not) fold into one
  per-(sample, channel) scale; the numerator
  (:func:`evonorm_layers.formulas.s_sigmoid`) runs as the fused CPU kernel
  or is recomputed in the backward pass, so only ``x`` and small tensors
  are kept.
  """

  centered = True  # divide by the group std (S0, S1) or the group RMS (S2)
  fused_kernels = True  # elementwise part by evonorm_layers.fused on CPU

  def normalize_activate(self, x, training, affine):
    # Batch-independent: training only chooses the fused kernels.
    if not self.nonlinearity:
      return series_normalization(self, x, training, affine,
                                  batch_dependent=False,
                                  groups=self.resolved_groups,
                                  centered=self.centered)
    denominator = _group_statistic(
        *stats_lib.instance_moments(x, self.layout), self.layout,
        self.resolved_groups, self.centered)
    scale, shift = affine.fold(tf.math.rsqrt(denominator + self.epsilon))
    if shift is None:
      shift = tf.zeros((), tf.float32)
    return _elementwise("SSigmoid", x, self.layout, training,
                        [self.sigmoid_slope(), scale, shift])

  def sigmoid_slope(self) -> tf.Tensor:
    """``a`` of ``x * sigmoid(a*x)``: 1 here, ``v1`` for EvoNorm-S0."""
    return tf.ones((), tf.float32)


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

  def sigmoid_slope(self):
    return self.channel_param(self.v1)


@_serializable
@register_norm_activation("evonorm_s1")
class EvoNormS1(_EvoNormS):
  """EvoNorm-S1: ``x sigmoid(x) / sqrt(s2_{wh,c/g}(x)) * gamma + beta``."""


@_serializable
@register_norm_activation("evonorm_s2")
class EvoNormS2(_EvoNormS):
  """EvoNorm-S2: ``x sigmoid(x) / sqrt(mu_{wh,c/g}(x^2)) * gamma + beta``."""

  centered = False
