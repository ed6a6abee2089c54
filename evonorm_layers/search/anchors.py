"""The proxy tasks' anchor architectures, with the candidate at every norm
site.

The paper scores each candidate on three anchors adapted to 32x32 inputs
(Section 4.3): ResNet-50 v2, MobileNetV2 and EfficientNet-B0. Its proxy
widths, depths and step counts are in an appendix not available here, so
these are this project's choices, all in ``ProxyConfig``:

* ``resnet``: pre-activation bottleneck ResNet (CIFAR stem), 3 stages of
  ``blocks`` bottlenecks at strides 1, 2, 2, widths ``width * (1, 2, 4)``
  (times 4 at the block outputs); the candidate replaces every BN-ReLU.
* ``mobilenet``: MobileNetV2 inverted residuals (expansion 6) at strides
  1, 2, 2, widths ``width * (1, 2, 4)``; the candidate replaces BN-ReLU6
  after the expansion and the depthwise convolution.
* ``efficientnet``: EfficientNet MBConv blocks (expansion 6, 3x3 and 5x5
  kernels, squeeze-excitation 0.25) with the candidate replacing BN-Swish.

Every candidate layer ends with its per-channel affine. Norm sites without an
activation (projection shortcuts, the last norm of a residual branch, MBConv
projections) use the candidate's ``nonlinearity=False`` form.

**Your own anchor**: an entry ``"my_pkg.models:build_unet"`` in ``anchors``
names a function ``build_unet(make_norm, input_shape, num_classes)`` that
returns a ``tf_keras.Model`` mapping ``[N, *input_shape]`` images to
``[N, num_classes]`` logits, calling ``make_norm()`` (or
``make_norm(nonlinearity=False)``) for every norm-activation site.
"""

from __future__ import annotations

from typing import Callable

import tf_keras

from evonorm_layers.search.proxy_config import ProxyConfig
from evonorm_layers.search.proxy_config import user_anchor


layers = tf_keras.layers


NormMaker = Callable[..., tf_keras.layers.Layer]


def _conv(x, filters, kernel, strides=1, decay=0.0):
  return layers.Conv2D(filters, kernel, strides=strides, padding="same",
                       use_bias=False, kernel_initializer="he_normal",
                       kernel_regularizer=tf_keras.regularizers.l2(decay)
                       if decay else None)(x)


def _resnet(x, make_norm, config):
  x = _conv(x, config.width, 3, decay=config.weight_decay)
  for stage, strides in enumerate((1, 2, 2)):
    filters = config.width * 2**stage
    for block in range(config.blocks):
      s = strides if block == 0 else 1
      preact = make_norm()(x)
      if s == 1 and x.shape[-1] == 4 * filters:
        shortcut = x
      else:
        shortcut = _conv(preact, 4 * filters, 1, s, config.weight_decay)
      y = _conv(preact, filters, 1, decay=config.weight_decay)
      y = _conv(make_norm()(y), filters, 3, s, config.weight_decay)
      y = _conv(make_norm()(y), 4 * filters, 1, decay=config.weight_decay)
      x = layers.Add()([shortcut, y])
  return make_norm()(x)


def _inverted_residual(x, make_norm, filters, strides, kernel, se, decay):
  inputs = x
  expanded = 6 * x.shape[-1]
  x = make_norm()(_conv(x, expanded, 1, decay=decay))
  x = layers.DepthwiseConv2D(kernel, strides, padding="same",
                             use_bias=False)(x)
  x = make_norm()(x)
  if se:
    squeeze = layers.GlobalAveragePooling2D(keepdims=True)(x)
    squeeze = layers.Conv2D(max(1, inputs.shape[-1] // 4), 1,
                            activation="swish")(squeeze)
    squeeze = layers.Conv2D(expanded, 1, activation="sigmoid")(squeeze)
    x = layers.Multiply()([x, squeeze])
  x = make_norm(nonlinearity=False)(_conv(x, filters, 1, decay=decay))
  if strides == 1 and inputs.shape[-1] == filters:
    x = layers.Add()([inputs, x])
  return x


def _mobilenet(x, make_norm, config):
  x = make_norm()(_conv(x, config.width, 3, decay=config.weight_decay))
  for stage, strides in enumerate((1, 2, 2)):
    for block in range(config.blocks):
      x = _inverted_residual(x, make_norm, config.width * 2**stage,
                             strides if block == 0 else 1, 3, False,
                             config.weight_decay)
  return make_norm()(_conv(x, 4 * config.width * 4, 1,
                           decay=config.weight_decay))


def _efficientnet(x, make_norm, config):
  x = make_norm()(_conv(x, config.width, 3, decay=config.weight_decay))
  for stage, (strides, kernel) in enumerate(((1, 3), (2, 5), (2, 3))):
    for block in range(config.blocks):
      x = _inverted_residual(x, make_norm, config.width * 2**stage,
                             strides if block == 0 else 1, kernel, True,
                             config.weight_decay)
  return make_norm()(_conv(x, 4 * config.width * 4, 1,
                           decay=config.weight_decay))


_BUILDERS = {"resnet": _resnet, "mobilenet": _mobilenet,
             "efficientnet": _efficientnet}


def build_model(anchor: str, make_norm: NormMaker, config: ProxyConfig,
                num_classes: int = 10) -> tf_keras.Model:
  """The anchor with ``make_norm(nonlinearity=...)`` at every norm site.

  ``anchor`` is one of ``ANCHORS`` or ``"module.path:function"`` (see the
  module docstring); a user's model is checked for what the search needs.
  """
  if anchor in _BUILDERS:
    inputs = tf_keras.Input((config.image_size, config.image_size, 3))
    features = _BUILDERS[anchor](inputs, make_norm, config)
    features = layers.GlobalAveragePooling2D()(features)
    return tf_keras.Model(inputs, layers.Dense(num_classes)(features),
                          name=f"{anchor}_proxy")
  sites = []

  def counting_norm(*args, **kwargs):
    layer = make_norm(*args, **kwargs)
    sites.append(layer)
    return layer

  model = user_anchor(anchor)(counting_norm,
                              (config.image_size, config.image_size, 3),
                              num_classes)
  if not isinstance(model, tf_keras.Model):
    raise ValueError(f"Anchor {anchor!r} returned {type(model).__name__}, "
                     "not a tf_keras.Model (build it with tf_keras, the "
                     "Keras of Model Garden).")
  if not sites:
    raise ValueError(f"Anchor {anchor!r} never called make_norm(): it would "
                     "not test the candidate layer. Call it at every "
                     "norm-activation site.")
  out = model.output_shape
  if not (isinstance(out, tuple) and len(out) == 2 and out[-1] == num_classes):
    raise ValueError(f"Anchor {anchor!r} outputs shape {out}; it must output "
                     f"[batch, {num_classes}] logits.")
  return model
