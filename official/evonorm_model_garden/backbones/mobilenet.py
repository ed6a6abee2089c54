"""MobileNetV2 and MnasNet-B1 with every norm site taken from the registry.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018 (https://arxiv.org/abs/1801.04381); Tan et al., "MnasNet:
Platform-Aware Neural Architecture Search for Mobile", CVPR 2019
(https://arxiv.org/abs/1807.11626). Both are in the paper's Table 3 (MV2, MN).

The MobileNetV2 table and the blocks are Model Garden's; MnasNet-B1, which
Model Garden lacks, is added here in the same table format. Its stages (stem
conv 3x3/2 with 32 filters, then kernel/stride/expansion/filters/repeats) are
MnasNet-B1's: (3,1,1,16,1), (3,2,3,24,3), (5,2,3,40,3), (5,2,6,80,3),
(3,1,6,96,2), (5,2,6,192,4), (3,1,6,320,1), then a 1x1 conv to 1280.
"""

from __future__ import annotations

import tf_keras
from official.vision.modeling.backbones import mobilenet as mg_mobilenet

from evonorm_model_garden import norm_activation as norm_lib
from evonorm_model_garden.backbones.serialization import SerializableBackbone
from evonorm_model_garden.backbones import blocks

layers = tf_keras.layers


def _stage(kernel_size, strides, expand_ratio, filters, repeats, activation):
  """Rows of one MnasNet stage: the first block strides, the last is output."""
  return [("invertedbottleneck", kernel_size, strides if i == 0 else 1,
           filters, float(expand_ratio), activation, i == repeats - 1)
          for i in range(repeats)]


MNASNET_B1_BLOCK_SPECS = {
    "spec_name": "MnasNetB1",
    "block_spec_schema": ["block_fn", "kernel_size", "strides", "filters",
                          "expand_ratio", "activation", "is_output"],
    "block_specs": (
        [("convbn", 3, 2, 32, None, "relu", False)] +
        [("invertedbottleneck", 3, 1, 16, 1.0, "relu", False)] +
        _stage(3, 2, 3, 24, 3, "relu") + _stage(5, 2, 3, 40, 3, "relu") +
        [row[:-1] + (False,) for row in _stage(5, 2, 6, 80, 3, "relu")] +
        _stage(3, 1, 6, 96, 2, "relu") +
        [row[:-1] + (False,) for row in _stage(5, 2, 6, 192, 4, "relu")] +
        _stage(3, 1, 6, 320, 1, "relu") +
        [("convbn", 1, 1, 1280, None, "relu", False)]),
}

SPECS = {
    "MobileNetV2": mg_mobilenet.MNV2_BLOCK_SPECS,
    "MnasNetB1": MNASNET_B1_BLOCK_SPECS,
}


@tf_keras.utils.register_keras_serializable(package="EvoNorm")
class MobileNet(SerializableBackbone):
  """MobileNetV2 / MnasNet-B1; ``norm_activation`` picks every norm site.

  Args:
    model_id: ``"MobileNetV2"`` or ``"MnasNetB1"``.
    filter_size_scale: width multiplier (filters rounded to multiples of 8).
    input_specs: ``tf_keras.layers.InputSpec`` of the images.
    norm_activation: ``evonorm_layers.NormActivationFactory`` fields.
    stochastic_depth_drop_rate: drop rate of the residual branches.
    kernel_initializer, kernel_regularizer, bias_regularizer: convolutions'.
  """

  def __init__(self, model_id: str = "MobileNetV2",
               filter_size_scale: float = 1.0,
               input_specs=layers.InputSpec(shape=[None, None, None, 3]),
               norm_activation=None, stochastic_depth_drop_rate: float = 0.0,
               kernel_initializer: str = "VarianceScaling",
               kernel_regularizer=None, bias_regularizer=None, **kwargs):
    if model_id not in SPECS:
      raise ValueError(f"MobileNet: `model_id` must be one of {sorted(SPECS)}"
                       f". Received: {model_id!r}.")
    self._config_dict = dict(
        model_id=model_id, filter_size_scale=filter_size_scale,
        stochastic_depth_drop_rate=stochastic_depth_drop_rate,
        kernel_initializer=kernel_initializer,
        kernel_regularizer=kernel_regularizer,
        bias_regularizer=bias_regularizer)
    make_norm = self.use_norm_activation(norm_activation)
    common = dict(kernel_initializer=kernel_initializer,
                  kernel_regularizer=kernel_regularizer,
                  bias_regularizer=bias_regularizer,
                  norm_activation=make_norm)

    inputs = tf_keras.Input(shape=input_specs.shape[1:])
    x, endpoints, level = inputs, {}, 2
    for i, spec in enumerate(mg_mobilenet.block_spec_decoder(
        SPECS[model_id], filter_size_scale)):
      name = f"block_group_{spec.block_fn}_{i}"
      if spec.block_fn == "convbn":
        x = blocks.Conv2DBNBlock(
            filters=spec.filters, kernel_size=spec.kernel_size,
            strides=spec.strides, activation=spec.activation,
            use_bias=spec.use_bias, use_normalization=spec.use_normalization,
            name=name, **common)(x)
      else:
        x = blocks.InvertedBottleneckBlock(
            in_filters=x.shape[-1], out_filters=spec.filters,
            strides=spec.strides, expand_ratio=spec.expand_ratio,
            kernel_size=spec.kernel_size, se_ratio=spec.se_ratio,
            expand_se_in_filters=True, use_depthwise=spec.use_depthwise,
            se_gating_activation="hard_sigmoid", activation=spec.activation,
            use_residual=spec.use_residual, divisible_by=8,
            stochastic_depth_drop_rate=stochastic_depth_drop_rate,
            name=name, **common)(x)
      if spec.is_output:
        endpoints[str(level)] = x
        level += 1
    # As in Model Garden: the last layer is an endpoint but not in
    # output_specs, which decoders read.
    self._output_specs = {k: v.get_shape() for k, v in endpoints.items()}
    endpoints[str(level)] = x
    super().__init__(inputs=inputs, outputs=endpoints, **kwargs)


build_mobilenet = norm_lib.register_backbone(
    "evonorm_mobilenet", MobileNet, lambda cfg, norm: dict(
        model_id=cfg.model_id,
        filter_size_scale=cfg.filter_size_scale,
        stochastic_depth_drop_rate=cfg.stochastic_depth_drop_rate))
