"""SpineNet with every norm site taken from the registry.

Du et al., "SpineNet: Learning Scale-Permuted Backbone for Recognition and
Localization", CVPR 2020 (https://arxiv.org/abs/1912.05027). The block
specifications, the scaling table (``SCALING_MAP``: SpineNet-49S, 49, 96,
143, 143L, 190) and the scale-permuted network are Model Garden's. The
methods that create norms are restated with registry layers:

* the stem convolution and every endpoint's 1x1 convolution: norm with the
  activation folded in;
* cross-scale resampling: the 1x1 reduction and the stride-2 3x3 with the
  activation folded in, the final 1x1 with ``nonlinearity=False``;
* the blocks: Model Garden's bottleneck and residual blocks with their norm
  sites listed (``evonorm_model_garden.backbones.blocks``).

The activation applied to the sum of a block's parents does not follow a
norm and stays ``norm_activation.activation`` (``relu`` or ``swish``).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras
from official.vision.modeling.backbones import spinenet as mg_spinenet
from official.vision.ops import spatial_transform_ops

from evonorm_model_garden import norm_activation as norm_lib
from evonorm_model_garden.backbones import blocks

layers = tf_keras.layers
_BLOCKS = {"bottleneck": blocks.BottleneckBlock,
           "residual": blocks.ResidualBlock}


@tf_keras.utils.register_keras_serializable(package="EvoNorm")
class SpineNet(norm_lib.TakesNormActivation, mg_spinenet.SpineNet):
  """Model Garden's SpineNet; ``norm_activation`` picks every norm site
  (:class:`~evonorm_model_garden.norm_activation.TakesNormActivation`)."""

  def _conv_norm(self, x, filters: int, kernel_size: int, strides: int = 1,
                 nonlinearity: bool = True):
    x = layers.Conv2D(
        filters=filters, kernel_size=kernel_size, strides=strides,
        padding="same", use_bias=False,
        kernel_initializer=self._kernel_initializer,
        kernel_regularizer=self._kernel_regularizer,
        bias_regularizer=self._bias_regularizer)(x)
    return self._make_norm(nonlinearity=nonlinearity)(x)

  def _block_group(self, inputs, filters, strides, block_fn_cand,
                   block_repeats=1, stochastic_depth_drop_rate=None,
                   name="block_group"):
    block_fn = _BLOCKS[block_fn_cand]
    width = filters * 4 if block_fn_cand == "bottleneck" else filters
    x = inputs
    for i in range(block_repeats):
      x = block_fn(
          filters=filters, strides=strides if i == 0 else 1,
          use_projection=(i == 0 and not (inputs.shape[-1] == width and
                                          strides == 1)),
          stochastic_depth_drop_rate=stochastic_depth_drop_rate,
          kernel_initializer=self._kernel_initializer,
          kernel_regularizer=self._kernel_regularizer,
          bias_regularizer=self._bias_regularizer,
          activation=self._activation,
          norm_activation=self._make_norm)(x)
    return tf.identity(x, name=name)

  def _build_stem(self, inputs):
    x = self._conv_norm(inputs, 64, 7, strides=2)
    x = layers.MaxPool2D(pool_size=3, strides=2, padding="same")(x)
    net = []
    for i in range(self._num_init_blocks):
      x = self._block_group(
          inputs=x,
          filters=int(mg_spinenet.FILTER_SIZE_MAP[2] * self._filter_size_scale),
          strides=1, block_fn_cand=self._init_block_fn,
          block_repeats=self._block_repeats, name=f"stem_block_{i + 1}")
      net.append(x)
    return net

  def _build_endpoints(self, net):
    return {str(level): self._conv_norm(net[str(level)],
                                        self._endpoints_num_filters, 1)
            for level in range(self._min_level, self._max_level + 1)}

  def _resample_with_alpha(self, inputs, input_width, input_block_fn,
                           target_width, target_num_filters, target_block_fn,
                           alpha=0.5):
    filters = inputs.shape[-1]
    if input_block_fn == "bottleneck":
      filters /= 4
    reduced = int(filters * alpha)
    x = self._conv_norm(inputs, reduced, 1)
    if input_width > target_width:  # stride-2 conv, then max-pools
      x = self._conv_norm(x, reduced, 3, strides=2)
      input_width /= 2
      while input_width > target_width:
        x = layers.MaxPool2D(pool_size=3, strides=2, padding="SAME")(x)
        input_width /= 2
    elif input_width < target_width:
      x = spatial_transform_ops.nearest_upsampling(
          x, scale=target_width // input_width)
    if target_block_fn == "bottleneck":
      target_num_filters *= 4
    return self._conv_norm(x, target_num_filters, 1, nonlinearity=False)


def _spinenet_arguments(cfg, norm):
  model_id = str(cfg.model_id)
  if model_id not in mg_spinenet.SCALING_MAP:
    raise ValueError(f"SpineNet: `model_id` must be one of "
                     f"{sorted(mg_spinenet.SCALING_MAP)}. Received: "
                     f"{model_id!r}.")
  scaling = mg_spinenet.SCALING_MAP[model_id]
  return dict(
      min_level=cfg.min_level, max_level=cfg.max_level,
      endpoints_num_filters=scaling["endpoints_num_filters"],
      resample_alpha=scaling["resample_alpha"],
      block_repeats=scaling["block_repeats"],
      filter_size_scale=scaling["filter_size_scale"],
      init_stochastic_depth_rate=cfg.stochastic_depth_drop_rate,
      activation=norm.activation)


build_spinenet = norm_lib.register_backbone("evonorm_spinenet", SpineNet,
                                            _spinenet_arguments)
