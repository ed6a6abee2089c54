"""Pre-activation ResNets (ResNet v2), the paper's ResNets.

He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016
(https://arxiv.org/abs/1603.05027). As in the EvoNorm authors' reference
code, each block starts with a norm-activation of its input, the projection
shortcut (when present) takes that pre-activated input, and one final
norm-activation follows the last block. Every norm site is followed by an
activation, so every site uses the layer's ``nonlinearity=True`` form.
With ``zero_init_residual`` the last norm inside each residual branch (before
its last convolution) starts with gamma = 0: for every layer of the library
its output is then 0, so each block starts as the identity.

Endpoints follow Model Garden: ``{"2": ..., "5": ...}`` at strides 4 to 32
(1 to 8 with the CIFAR stem). Levels 2-4 are block-group outputs (sums, not
normalized); level 5 includes the final norm-activation, so that a
classification head can pool it directly.
"""

from __future__ import annotations

import tf_keras

from evonorm_model_garden import norm_activation as norm_lib
from evonorm_model_garden.backbones.serialization import SerializableBackbone

layers = tf_keras.layers

# model_id -> (block type, [blocks per group]). Filters per group: 64, 128,
# 256, 512 (times 4 at the output of a bottleneck block).
RESNET_V2_SPECS = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
    200: ("bottleneck", [3, 24, 36, 3]),
}
_GROUP_FILTERS = (64, 128, 256, 512)
# Stem: "imagenet" is conv 7x7/2 + max-pool 3x3/2; "cifar" is conv 3x3/1.
STEM_TYPES = ("imagenet", "cifar")


@tf_keras.utils.register_keras_serializable(package="EvoNorm")
class ResNetV2(SerializableBackbone):
  """A pre-activation ResNet backbone with a selectable norm-activation layer.

  Args:
    model_id: depth, a key of ``RESNET_V2_SPECS`` (18 to 200).
    input_specs: ``tf_keras.layers.InputSpec`` of the images.
    norm_activation: the layer at every norm site: a registered name (e.g.
      ``"evonorm_b0"``) or ``evonorm_layers.NormActivationFactory`` fields as
      a dict (``type``, ``groups``, ``epsilon``, ``momentum``,
      ``synchronized``).
    stem_type: ``"imagenet"`` or ``"cifar"``.
    width_multiplier: scales every filter count.
    kernel_initializer, kernel_regularizer: for every convolution.
  """

  def __init__(self,
               model_id: int = 50,
               input_specs: layers.InputSpec = layers.InputSpec(
                   shape=[None, None, None, 3]),
               norm_activation="bn_relu",
               stem_type: str = "imagenet",
               width_multiplier: float = 1.0,
               kernel_initializer: str = "he_normal",
               kernel_regularizer: tf_keras.regularizers.Regularizer | None = None,
               **kwargs):
    if model_id not in RESNET_V2_SPECS:
      raise ValueError(f"ResNetV2: `model_id` must be one of "
                       f"{sorted(RESNET_V2_SPECS)}. Received: {model_id!r}.")
    if stem_type not in STEM_TYPES:
      raise ValueError(f"ResNetV2: `stem_type` must be one of {STEM_TYPES}. "
                       f"Received: {stem_type!r}.")
    self.use_norm_activation(norm_activation)
    self._config_dict = dict(
        model_id=model_id,
        stem_type=stem_type, width_multiplier=width_multiplier,
        kernel_initializer=kernel_initializer,
        kernel_regularizer=kernel_regularizer)
    self._conv_kwargs = dict(use_bias=False, padding="same",
                             kernel_initializer=kernel_initializer,
                             kernel_regularizer=kernel_regularizer)
    block_type, repeats = RESNET_V2_SPECS[model_id]
    block = self._bottleneck if block_type == "bottleneck" else self._basic

    inputs = tf_keras.Input(shape=input_specs.shape[1:])
    if stem_type == "imagenet":
      x = self._conv(inputs, int(64 * width_multiplier), 7, 2, "stem_conv")
      x = layers.MaxPool2D(3, 2, padding="same", name="stem_pool")(x)
    else:
      x = self._conv(inputs, int(64 * width_multiplier), 3, 1, "stem_conv")

    endpoints = {}
    for i, (filters, n) in enumerate(zip(_GROUP_FILTERS, repeats)):
      for j in range(n):
        x = block(x, int(filters * width_multiplier),
                  strides=2 if (i > 0 and j == 0) else 1,
                  project=(j == 0), name=f"group{i + 2}_block{j + 1}")
      endpoints[str(i + 2)] = x
    endpoints["5"] = self._make_norm(name="final_norm")(x)
    self._output_specs = {k: v.get_shape() for k, v in endpoints.items()}
    super().__init__(inputs=inputs, outputs=endpoints, **kwargs)

  def _conv(self, x, filters, kernel_size, strides, name):
    return layers.Conv2D(filters, kernel_size, strides=strides, name=name,
                         **self._conv_kwargs)(x)

  def _shortcut(self, x, preact, filters, strides, project, name):
    if not project and x.shape[-1] == filters and strides == 1:
      return x
    return self._conv(preact, filters, 1, strides, f"{name}_projection")

  def _basic(self, x, filters, strides, project, name):
    preact = self._make_norm(name=f"{name}_norm1")(x)
    shortcut = self._shortcut(x, preact, filters, strides, project, name)
    y = self._conv(preact, filters, 3, strides, f"{name}_conv1")
    y = self._make_norm(name=f"{name}_norm2", residual_branch_end=True)(y)
    y = self._conv(y, filters, 3, 1, f"{name}_conv2")
    return layers.Add(name=f"{name}_add")([shortcut, y])

  def _bottleneck(self, x, filters, strides, project, name):
    preact = self._make_norm(name=f"{name}_norm1")(x)
    shortcut = self._shortcut(x, preact, 4 * filters, strides, project, name)
    y = self._conv(preact, filters, 1, 1, f"{name}_conv1")
    y = self._make_norm(name=f"{name}_norm2")(y)
    y = self._conv(y, filters, 3, strides, f"{name}_conv2")
    y = self._make_norm(name=f"{name}_norm3", residual_branch_end=True)(y)
    y = self._conv(y, 4 * filters, 1, 1, f"{name}_conv3")
    return layers.Add(name=f"{name}_add")([shortcut, y])


build_resnet_v2 = norm_lib.register_backbone(
    "resnet_v2", ResNetV2, lambda cfg, norm: dict(
        model_id=cfg.model_id,
        stem_type=cfg.stem_type,
        width_multiplier=cfg.width_multiplier))
