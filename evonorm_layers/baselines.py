"""The paper's baseline layers (Tables 3, 4, 6 and 8), with the same interface.

Each formula is the paper's, with the per-channel affine where the paper puts
it (inside the activation for BN-ReLU, GN-ReLU, FRN, ...):

=================  =============================================================
``bn_relu``         ``max(z, 0)``, ``z = (x - mu_bwh) / sqrt(s2_bwh) * gamma + beta``
``bn_silu``         ``z * sigmoid(v1 z)``, ``z`` as for BN-ReLU
``gn_relu``         ``max(z, 0)``, ``z = (x - mu_{wh,c/g}) / sqrt(s2_{wh,c/g}) * gamma + beta``
``gn_silu``         ``z * sigmoid(v1 z)``, ``z`` as for GN-ReLU
``frn_tlu``         ``max(x / sqrt(mu_wh(x^2)) * gamma + beta, tau)``
``ln_relu``         ``max(z, 0)``, ``z = (x - mu_whc) / sqrt(s2_whc) * gamma + beta``
``pixelnorm_relu``  ``max(x / sqrt(mu_c(x^2)) * gamma + beta, 0)``
``rs_rej``          ``max(x, 0) / sqrt(mu_bwh(x^2)) * gamma + beta``
=================  =============================================================

``nonlinearity=False`` drops the activation (ReLU, SiLU, TLU) and keeps the
normalization and affine: plain BatchNorm, GroupNorm, FRN, LayerNorm,
PixelNorm, and ``x / sqrt(mu_bwh(x^2))`` for RS+rej.

The affine, conditional or not (see :mod:`evonorm_layers.affine`), enters
where the formulas above put ``gamma`` and ``beta``: before the activation
for BN/GN/LN/FRN/PixelNorm (folded into the normalization's per-channel or
per-sample scale and shift), after it for RS+rej.

Under mixed precision the statistics are float32; ``x * scale + shift``
(with TLU's threshold) runs in float32 arithmetic and keeps only its input,
in the compute dtype, for backprop; ReLU runs in the compute dtype (nothing
to overflow); the SiLU is recomputed in float32 in the backward pass.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from evonorm_layers import affine as affine_lib
from evonorm_layers import base
from evonorm_layers import recompute
from evonorm_layers import statistics as stats_lib
from evonorm_layers.registry import register_norm_activation

_serializable = tf_keras.saving.register_keras_serializable(package="EvoNorm")


class _Standardize:
  """``z = (x - mean) / sqrt(var + eps) * gamma + beta``, then ``activate``.

  Subclasses provide ``statistics(x, training) -> (mean, var)`` and
  ``activate(z)``; with ``nonlinearity=False`` the activation is dropped.
  """

  def normalize_activate(self, x, training, affine):
    mean, var = self.statistics(x, training)
    inverse_std = tf.math.rsqrt(var + self.epsilon)
    z = affine_lib.scale_shift(x, *affine.fold(inverse_std,
                                               -mean * inverse_std))
    return self.activate(z) if self.nonlinearity else z


class _ReLU:

  def activate(self, z):
    return tf.nn.relu(z)


class _SiLU:
  """``z * sigmoid(v1 z)`` with a per-channel ``v1`` (ones), as in Table 3."""

  def create_variables(self):
    super().create_variables()
    if self.nonlinearity:  # v1 belongs to the activation
      self.v1 = self.add_channel_weight("v1", "ones")

  def activate(self, z):
    # Recomputed in the backward pass, as for the EvoNorms, so that the
    # comparison of memory is like for like.
    return recompute.elementwise(lambda z, v1: z * tf.sigmoid(v1 * z), z,
                                 self.channel_param(self.v1))


class _BatchNorm(_Standardize, base.BatchDependentNormActivation):
  """Batch statistics in training, moving mean and variance in inference.

  Without cross-replica aggregation, the normalization runs as TensorFlow's
  fused batch-norm kernel (the one tf_keras BatchNormalization uses) on a
  4-D view of the input, for any rank and either channel layout; its
  Bessel-corrected batch variance is converted back to the population
  variance for the moving average.
  """

  moving_statistics = ("mean", "variance")
  moving_initializers = {"mean": "zeros", "variance": "ones"}

  def normalize_activate(self, x, training, affine):
    if self.cross_replica():
      return super().normalize_activate(x, training, affine)
    layout = self.layout
    data_format = "NCHW" if layout.channels_first else "NHWC"
    as_is = layout.rank == 4 and layout.channel_axis in (1, 3)
    if as_is:
      # Images as they are: a static graph, in which TensorFlow and TFLite
      # fold an inference batch norm into the convolution before it.
      x4 = x
    elif layout.channels_first:
      x4 = tf.reshape(x, [tf.shape(x)[0], layout.channels, -1, 1])
    else:
      x4 = tf.reshape(x, [tf.shape(x)[0], -1, 1, layout.channels])
    # The kernel takes one per-channel scale and offset: the layer's own
    # affine goes in; a conditional (per-sample) one is applied after it.
    ones = tf.ones((layout.channels,), tf.float32)
    if affine.conditional:
      gamma, beta, after = ones, tf.zeros_like(ones), affine
    else:
      gamma = ones if affine.gamma is None else tf.reshape(affine.gamma, [-1])
      beta = (tf.zeros_like(ones) if affine.beta is None else
              tf.reshape(affine.beta, [-1]))
      after = affine_lib.Affine(None, None)

    def train():
      y, mean, unbiased_var = tf.compat.v1.nn.fused_batch_norm(
          x4, gamma, beta, epsilon=self.epsilon, data_format=data_format,
          is_training=True)
      count = tf.cast(stats_lib.element_count(
          tf.shape(x4, out_type=tf.int64), (0, 2, 3) if layout.channels_first
          else (0, 1, 2)), tf.float32)
      # Bessel-corrected -> population variance (0/0 for an empty batch,
      # which update_moving skips).
      self.update_moving({"mean": mean,
                          "variance": unbiased_var * ((count - 1.0) / count)},
                         count)
      return y

    def infer():
      return tf.compat.v1.nn.fused_batch_norm(
          x4, gamma, beta, mean=self.moving["mean"],
          variance=self.moving["variance"], epsilon=self.epsilon,
          data_format=data_format, is_training=False)[0]

    if isinstance(training, bool):
      z = train() if training else infer()
    else:
      z = tf.__internal__.smart_cond.smart_cond(training, train, infer)
    if not as_is:
      z = tf.reshape(z, tf.shape(x))
    z = after.apply(z)
    return self.activate(z) if self.nonlinearity else z

  def statistics(self, x, training):
    """Cross-replica path: batch moments aggregated over all replicas."""

    def batch_statistics():
      moments = self.batch_moments(x)
      return {"mean": moments.mean, "variance": moments.variance}, \
          moments.count

    batch = self.batch_or_moving(training, batch_statistics)
    return batch["mean"], batch["variance"]


@_serializable
@register_norm_activation("bn_relu")
class BatchNormReLU(_ReLU, _BatchNorm):
  """BN-ReLU: ``max((x - mu_bwh) / sqrt(s2_bwh) * gamma + beta, 0)``.

  Variables: ``gamma``, ``beta``, ``moving_mean`` (zeros) and
  ``moving_variance`` (ones); both moving statistics use population variance.
  """


@_serializable
@register_norm_activation("bn_silu", aliases=("bn_swish",))
class BatchNormSiLU(_SiLU, _BatchNorm):
  """BN-SiLU/Swish: ``z sigmoid(v1 z)``, ``z = BN(x) * gamma + beta``."""


class _GroupNorm(_Standardize, base.GroupedNormActivation):
  """Statistics over the instance axes and the channels of each group."""

  def statistics(self, x, training):
    del training  # batch-independent
    return stats_lib.group_moments(
        *stats_lib.instance_moments(x, self.layout), self.layout,
        self.resolved_groups)


@_serializable
@register_norm_activation("gn_relu")
class GroupNormReLU(_ReLU, _GroupNorm):
  """GN-ReLU: ``max((x - mu_{wh,c/g}) / sqrt(s2_{wh,c/g}) * gamma + beta, 0)``."""


@_serializable
@register_norm_activation("gn_silu", aliases=("gn_swish",))
class GroupNormSiLU(_SiLU, _GroupNorm):
  """GN-SiLU/Swish (Table 8): ``z sigmoid(v1 z)``, ``z = GN(x) * gamma + beta``."""


@_serializable
@register_norm_activation("ln_relu", aliases=("layernorm_relu",))
class LayerNormReLU(_ReLU, _Standardize, base.NormActivation):
  """LayerNorm-ReLU: ``max((x - mu_whc) / sqrt(s2_whc) * gamma + beta, 0)``.

  Statistics over every axis but the batch axis (GroupNorm with one group);
  the affine is per channel, as in every layer of the paper.
  """

  def statistics(self, x, training):
    del training  # batch-independent
    return stats_lib.group_moments(
        *stats_lib.instance_moments(x, self.layout), self.layout, 1)


@_serializable
@register_norm_activation("frn_tlu", aliases=("frn",))
class FilterResponseNormTLU(base.NormActivation):
  """FRN with TLU (Singh & Krishnan 2019): ``max(x / sqrt(mu_wh(x^2)) * gamma + beta, tau)``.

  Variables: ``gamma``, ``beta`` and the per-channel threshold ``tau``
  (zeros, the paper's ``v0``).
  """

  def create_variables(self):
    if self.nonlinearity:  # tau is the TLU's threshold
      self.tau = self.add_channel_weight("tau", "zeros")

  def normalize_activate(self, x, training, affine):
    del training
    mean, var = stats_lib.instance_moments(x, self.layout)
    z = affine_lib.scale_shift(x, *affine.fold(
        tf.math.rsqrt(tf.square(mean) + var + self.epsilon)))
    if not self.nonlinearity:
      return z
    return recompute.float32_elementwise(tf.maximum, z,
                                         self.channel_param(self.tau))


@_serializable
@register_norm_activation("pixelnorm_relu", aliases=("pixel_norm_relu",))
class PixelNormReLU(base.NormActivation):
  """PixelNorm-ReLU (Karras et al. 2018): ``max(x / sqrt(mu_c(x^2)) * gamma + beta, 0)``.

  ``mu_c`` averages over the channels at each position (each sample and
  location is normalized on its own).
  """

  def normalize_activate(self, x, training, affine):
    del training
    # From the moments over the channels, whose gradient keeps only x.
    mean, var = stats_lib.moments(x, (self.layout.channel_axis,))
    mean_square = tf.square(mean) + var
    z = affine.apply(affine_lib.scale_shift(
        x, tf.math.rsqrt(mean_square + self.epsilon), None))
    return tf.nn.relu(z) if self.nonlinearity else z


@_serializable
@register_norm_activation("rs_rej", aliases=("random_search_rejection",))
class RandomSearchRejectionLayer(base.BatchDependentNormActivation):
  """RS+rej, the layer random search with rejection found (Table 3).

  ``max(x, 0) / sqrt(mu_bwh(x^2)) * gamma + beta``: a compact, uncentered
  variant of BN-ReLU. ``mu_bwh(x^2)`` is a batch statistic, tracked in
  ``moving_second_moment`` (ones) for inference.
  """

  moving_statistics = ("second_moment",)

  def normalize_activate(self, x, training, affine):
    def batch_second_moment():
      moments = self.batch_moments(x)
      return ({"second_moment": tf.square(moments.mean) + moments.variance},
              moments.count)

    batch = self.batch_or_moving(training, batch_second_moment)
    numerator = tf.nn.relu(x) if self.nonlinearity else x
    return affine_lib.scale_shift(numerator, *affine.fold(
        tf.math.rsqrt(batch["second_moment"] + self.epsilon)))
