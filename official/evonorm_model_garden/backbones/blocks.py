"""Model Garden's blocks with every norm site taken from the registry.

Each block lists its norm sites
(:class:`evonorm_model_garden.norm_sites.NormSite`) and mixes in :class:`~evonorm_model_garden.norm_sites.RegistryNormSites`, which
replaces Model Garden's ``BatchNormalization`` layers after ``build``.
Model Garden's ``call`` is reused unchanged; activations that do not follow
a norm (after a residual add, inside squeeze-excitation) are kept.
"""

from __future__ import annotations

import tf_keras
from official.vision.modeling.backbones import mobilenet
from official.vision.modeling.layers import nn_blocks

from evonorm_model_garden.norm_sites import NormSite
from evonorm_model_garden.norm_sites import RegistryNormSites

_LINEAR = (None, "linear", "identity")
_serializable = tf_keras.utils.register_keras_serializable(package="EvoNorm")


@_serializable
class ResidualBlock(RegistryNormSites, nn_blocks.ResidualBlock):
  """Model Garden's basic ResNet v1 block with registry norms.

  Model Garden applies one activation function both after ``norm1`` and
  after the residual add, so ``call`` is restated here with the first one
  folded into the norm.
  """

  NORM_SITES = (NormSite("_norm0"), NormSite("_norm1", "_activation"),
                NormSite("_norm2", residual_branch_end=True))

  def call(self, inputs, training=None):
    shortcut = inputs
    if self._use_projection:
      shortcut = self._norm0(self._shortcut(shortcut))
    if self._use_explicit_padding:
      inputs = self._pad(inputs)
    x = self._norm1(self._conv1(inputs))
    if self._activation in _LINEAR:
      x = self._activation_fn(x)
    x = self._norm2(self._conv2(x))
    if self._squeeze_excitation:
      x = self._squeeze_excitation(x)
    if self._stochastic_depth:
      x = self._stochastic_depth(x, training=training)
    return self._activation_fn(x + shortcut)


@_serializable
class BottleneckBlock(RegistryNormSites, nn_blocks.BottleneckBlock):
  """Model Garden's ResNet v1 bottleneck block with registry norms."""

  NORM_SITES = (NormSite("_norm0"),
                NormSite("_norm1", "_activation", "_activation1"),
                NormSite("_norm2", "_activation", "_activation2"),
                NormSite("_norm3", residual_branch_end=True))


@_serializable
class InvertedBottleneckBlock(RegistryNormSites,
                              nn_blocks.InvertedBottleneckBlock):
  """Model Garden's MBConv / inverted-residual block with registry norms."""

  NORM_SITES = (NormSite("_norm0", "_activation", "_activation_layer"),
                NormSite("_norm1", "_depthwise_activation",
                         "_depthwise_activation_layer"),
                NormSite("_norm2", residual_branch_end=True))

  def has_residual_branch(self) -> bool:
    # Model Garden adds the skip connection only in this case.
    return (super().has_residual_branch() and self._use_residual and self._in_filters == self._out_filters and
            self._strides == 1)

  def build(self, input_shape):
    super().build(input_shape)
    if self._expand_ratio <= 1:
      # Model Garden creates the expansion norm even when there is no
      # expansion, and never calls it; drop it instead of keeping an unbuilt
      # layer.
      self._norm0 = None


@_serializable
class Conv2DBNBlock(RegistryNormSites, mobilenet.Conv2DBNBlock):
  """Model Garden's MobileNet Conv-BN-activation block with registry norms."""

  NORM_SITES = (NormSite("_norm0", "_activation", "_activation_layer"),)
