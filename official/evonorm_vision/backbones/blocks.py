"""Model Garden's blocks with every norm site taken from the registry.

Model Garden's blocks create ``BatchNormalization`` layers in ``build`` and
apply an activation after some of them in ``call``. Each subclass here lists
its norm sites as ``(norm attribute, attribute naming the activation that
follows it or None, activation-layer attribute or None)``. After Model
Garden's ``build`` the norm at each site is replaced by a registered
norm-activation layer: with the activation folded in (``nonlinearity=True``;
the activation layer becomes the identity) where the site is followed by a
non-linear activation, and ``nonlinearity=False`` where it is not (projection shortcuts, the last norm of a residual branch,
MBConv projections, linear Conv-BN blocks). Model Garden's ``call`` is reused
unchanged; activations that do not follow a norm (after a residual add, inside
squeeze-excitation) are kept.
"""

from __future__ import annotations

from typing import Any, Mapping

import tf_keras
from official.vision.modeling.backbones import mobilenet
from official.vision.modeling.layers import nn_blocks

import evonorm_layers

_LINEAR = (None, "linear", "identity")
_serializable = tf_keras.utils.register_keras_serializable(package="EvoNorm")


class _RegistryNormSites:
  """Mixin replacing the norm sites listed in ``NORM_SITES`` after build.

  Args:
    norm_activation: ``NormActivationFactory`` fields as a dict (``type``,
      ``groups``, ``epsilon``, ``momentum``, ``synchronized``); serialized in
      ``get_config``.
  """

  # (norm attribute, attribute naming the activation after it or None,
  #  activation-layer attribute to turn into the identity or None)
  NORM_SITES: tuple[tuple[str, str | None, str | None], ...] = ()

  def __init__(self, *args, norm_activation: Mapping[str, Any] | None = None,
               **kwargs):
    super().__init__(*args, **kwargs)
    self._norm_activation = dict(norm_activation or {})
    self._make_norm = evonorm_layers.NormActivationFactory(
        **{**self._norm_activation, "axis": self._bn_axis})

  def build(self, input_shape):
    super().build(input_shape)
    for norm_attr, act_name_attr, act_attr in self.NORM_SITES:
      if getattr(self, norm_attr, None) is None:
        continue  # site absent in this configuration (e.g. no projection)
      folded = (act_name_attr is not None and
                getattr(self, act_name_attr) not in _LINEAR)
      norm = self._make_norm(nonlinearity=folded, name=norm_attr.strip("_"))
      if getattr(self, "_bn_trainable", True) is False:
        norm.trainable = False
      setattr(self, norm_attr, norm)
      if folded and act_attr is not None:
        setattr(self, act_attr, tf_keras.layers.Activation("linear"))

  def get_config(self):
    return {**super().get_config(), "norm_activation": self._norm_activation}


@_serializable
class ResidualBlock(_RegistryNormSites, nn_blocks.ResidualBlock):
  """Model Garden's basic ResNet v1 block with registry norms.

  Model Garden applies one activation function both after ``norm1`` and
  after the residual add, so ``call`` is restated here with the first one
  folded into the norm.
  """

  NORM_SITES = (("_norm0", None, None), ("_norm1", "_activation", None),
                ("_norm2", None, None))

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
class BottleneckBlock(_RegistryNormSites, nn_blocks.BottleneckBlock):
  """Model Garden's ResNet v1 bottleneck block with registry norms."""

  NORM_SITES = (("_norm0", None, None),
                ("_norm1", "_activation", "_activation1"),
                ("_norm2", "_activation", "_activation2"),
                ("_norm3", None, None))


@_serializable
class InvertedBottleneckBlock(_RegistryNormSites,
                              nn_blocks.InvertedBottleneckBlock):
  """Model Garden's MBConv / inverted-residual block with registry norms."""

  NORM_SITES = (("_norm0", "_activation", "_activation_layer"),
                ("_norm1", "_depthwise_activation",
                 "_depthwise_activation_layer"),
                ("_norm2", None, None))

  def build(self, input_shape):
    super().build(input_shape)
    if self._expand_ratio <= 1:
      # Model Garden creates the expansion norm even when there is no
      # expansion, and never calls it; drop it instead of keeping an unbuilt
      # layer.
      self._norm0 = None


@_serializable
class Conv2DBNBlock(_RegistryNormSites, mobilenet.Conv2DBNBlock):
  """Model Garden's MobileNet Conv-BN-activation block with registry norms."""

  NORM_SITES = (("_norm0", "_activation", "_activation_layer"),)
