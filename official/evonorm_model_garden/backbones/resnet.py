"""Model Garden's ResNet (v1) with every norm site taken from the registry.

Subclasses Model Garden's ``ResNet``: the architecture, the block tables
(``RESNET_SPECS``), ResNet-D shortcuts, squeeze-excitation and stochastic
depth are Model Garden's; the stem and the blocks use registry norms (see
``blocks.py``). The ReLU after each residual add is not a norm site and stays
``norm_activation.activation``. ``bn_trainable=False`` freezes every norm,
the stem's included (frozen-norm fine-tuning, as detection does).
"""

from __future__ import annotations

import functools

import tf_keras
from official.vision.modeling.backbones import resnet as mg_resnet
from official.vision.modeling.layers import nn_blocks

from evonorm_model_garden import norm_activation as norm_lib
from evonorm_model_garden.backbones import blocks

layers = tf_keras.layers

_BLOCKS = {nn_blocks.ResidualBlock: blocks.ResidualBlock,
           nn_blocks.BottleneckBlock: blocks.BottleneckBlock}


@tf_keras.utils.register_keras_serializable(package="EvoNorm")
class ResNet(norm_lib.TakesNormActivation, mg_resnet.ResNet):
  """Model Garden's ResNet v1; ``norm_activation`` picks every norm site
  (:class:`~evonorm_model_garden.norm_activation.TakesNormActivation`)."""

  def _conv(self, x, filters, kernel_size, strides):
    return layers.Conv2D(
        filters=filters, kernel_size=kernel_size, strides=strides,
        use_bias=False, padding="same",
        kernel_initializer=self._kernel_initializer,
        kernel_regularizer=self._kernel_regularizer,
        bias_regularizer=self._bias_regularizer)(x)

  def _stem(self, inputs):
    scale = self._depth_multiplier if self._scale_stem else 1.0
    if self._stem_type == "v0":
      convs = [(int(64 * scale), 7, 2)]
    elif self._stem_type == "v1":  # ResNet-D stem
      convs = [(int(32 * scale), 3, 2), (int(32 * scale), 3, 1),
               (int(64 * scale), 3, 1)]
    else:
      raise ValueError(f"ResNet: `stem_type` must be 'v0' or 'v1'. "
                       f"Received: {self._stem_type!r}.")
    x = inputs
    for filters, kernel_size, strides in convs:
      x = self._stem_norm()(self._conv(x, filters, kernel_size, strides))
    if self._replace_stem_max_pool:
      return self._stem_norm()(
          self._conv(x, int(64 * self._depth_multiplier), 3, 2))
    return layers.MaxPool2D(pool_size=3, strides=2, padding="same")(x)

  def _stem_norm(self):
    norm = self._make_norm()
    norm.trainable = self._bn_trainable
    return norm

  def _block_group(self, inputs, filters, strides, block_fn, *args, **kwargs):
    block = functools.partial(_BLOCKS[block_fn],
                              norm_activation=self._make_norm)
    return super()._block_group(inputs, filters, strides, block, *args,
                                **kwargs)


build_resnet = norm_lib.register_backbone(
    "evonorm_resnet", ResNet, lambda cfg, norm: dict(
        model_id=cfg.model_id,
        depth_multiplier=cfg.depth_multiplier,
        stem_type=cfg.stem_type,
        resnetd_shortcut=cfg.resnetd_shortcut,
        replace_stem_max_pool=cfg.replace_stem_max_pool,
        se_ratio=cfg.se_ratio,
        init_stochastic_depth_rate=cfg.stochastic_depth_drop_rate,
        scale_stem=cfg.scale_stem,
        activation=norm.activation,
        bn_trainable=cfg.bn_trainable))
