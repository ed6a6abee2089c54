"""EfficientNet B0-B7 with every norm site taken from the registry.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019 (https://arxiv.org/abs/1905.11946). The block table
(``EN_B0_BLOCK_SPECS``), the compound scaling (``SCALING_MAP``) and the MBConv
block are Model Garden's; the stem, the MBConv norms and the head use registry
norms. Model Garden's EfficientNet puts BN-Swish at these sites, so
``bn_silu`` is the paper's BN-SiLU baseline; the MBConv projection and the
squeeze-excitation keep their own (non-norm) form.
"""

from __future__ import annotations

import tf_keras
from official.vision.modeling.backbones import efficientnet as mg_efficientnet
from official.vision.modeling.layers import nn_layers

from evonorm_model_garden import norm_activation as norm_lib
from evonorm_model_garden.backbones.serialization import SerializableBackbone
from evonorm_model_garden.backbones import blocks

layers = tf_keras.layers


@tf_keras.utils.register_keras_serializable(package="EvoNorm")
class EfficientNet(SerializableBackbone):
  """EfficientNet backbone; ``norm_activation`` picks every norm site.

  Args:
    model_id: ``"b0"`` to ``"b7"``.
    input_specs: ``tf_keras.layers.InputSpec`` of the images.
    norm_activation: ``evonorm_layers.NormActivationFactory`` fields.
    se_ratio: squeeze-excitation ratio of every MBConv block (0.25 in the
      paper's EfficientNets; Model Garden's config default is 0).
    stochastic_depth_drop_rate: drop rate of the MBConv residual branches.
    activation: activation of the MBConv blocks' non-norm parts.
    se_inner_activation: activation inside squeeze-excitation.
    kernel_initializer, kernel_regularizer, bias_regularizer: convolutions'.
  """

  def __init__(self, model_id: str = "b0",
               input_specs=layers.InputSpec(shape=[None, None, None, 3]),
               norm_activation=None, se_ratio: float = 0.0,
               stochastic_depth_drop_rate: float = 0.0,
               activation: str = "swish", se_inner_activation: str = "relu",
               kernel_initializer: str = "VarianceScaling",
               kernel_regularizer=None, bias_regularizer=None, **kwargs):
    if model_id not in mg_efficientnet.SCALING_MAP:
      raise ValueError(f"EfficientNet: `model_id` must be one of "
                       f"{sorted(mg_efficientnet.SCALING_MAP)}. "
                       f"Received: {model_id!r}.")
    self._config_dict = dict(
        model_id=model_id,
        se_ratio=se_ratio,
        stochastic_depth_drop_rate=stochastic_depth_drop_rate,
        activation=activation, se_inner_activation=se_inner_activation,
        kernel_initializer=kernel_initializer,
        kernel_regularizer=kernel_regularizer,
        bias_regularizer=bias_regularizer)
    make_norm = self.use_norm_activation(norm_activation)
    conv_kwargs = dict(use_bias=False, padding="same",
                       kernel_initializer=kernel_initializer,
                       kernel_regularizer=kernel_regularizer,
                       bias_regularizer=bias_regularizer)
    scaling = mg_efficientnet.SCALING_MAP[model_id]

    inputs = tf_keras.Input(shape=input_specs.shape[1:])
    x = layers.Conv2D(nn_layers.round_filters(32, scaling["width_scale"]), 3,
                      strides=2, **conv_kwargs)(inputs)
    x = make_norm(name="stem_norm")(x)

    endpoints, level = {}, 2
    specs = mg_efficientnet.block_spec_decoder(
        mg_efficientnet.EN_B0_BLOCK_SPECS, scaling["width_scale"],
        scaling["depth_scale"])
    for i, spec in enumerate(specs):
      for j in range(spec.block_repeats):
        x = blocks.InvertedBottleneckBlock(
            in_filters=spec.in_filters if j == 0 else spec.out_filters,
            out_filters=spec.out_filters,
            expand_ratio=spec.expand_ratio,
            strides=spec.strides if j == 0 else 1,
            kernel_size=spec.kernel_size,
            se_ratio=se_ratio,
            stochastic_depth_drop_rate=stochastic_depth_drop_rate,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activation=activation,
            se_inner_activation=se_inner_activation,
            norm_activation=make_norm,
            name=f"block_group_{i}_block_{j}")(x)
      if spec.is_output:
        endpoints[str(level)] = x
        level += 1
    self._output_specs = {k: v.get_shape() for k, v in endpoints.items()}

    x = layers.Conv2D(nn_layers.round_filters(1280, scaling["width_scale"]), 1,
                      **conv_kwargs)(x)
    endpoints[str(level)] = make_norm(name="head_norm")(x)
    super().__init__(inputs=inputs, outputs=endpoints, **kwargs)


build_efficientnet = norm_lib.register_backbone(
    "evonorm_efficientnet", EfficientNet, lambda cfg, norm: dict(
        model_id=cfg.model_id,
        se_ratio=cfg.se_ratio,
        stochastic_depth_drop_rate=cfg.stochastic_depth_drop_rate,
        activation=norm.activation))
