"""Proxy tasks: small anchor architectures and the data they train on.

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
projections) use the candidate's ``nonlinearity=False`` form. Data: CIFAR-10
from a prepared TFDS ``data_dir`` when present, otherwise the digits images
that scikit-learn ships (upscaled to 32x32); nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf
import tf_keras

ANCHORS = ("resnet", "mobilenet", "efficientnet")
layers = tf_keras.layers


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
  """Everything that defines the proxy tasks (defaults: a laptop search)."""

  anchors: tuple[str, ...] = ANCHORS
  dataset: str = "auto"  # "cifar10", "digits" or "auto" (CIFAR if prepared)
  tfds_data_dir: str | None = None
  image_size: int = 32
  width: int = 16
  blocks: int = 1
  batch_size: int = 64
  learning_rate: float = 0.03
  weight_decay: float = 5e-4
  groups: int = 4
  quality_steps: int = 100  # quality protocol: train this long...
  quality_threshold: float = 0.2  # ...then reject below this accuracy
  train_steps: int = 400  # full proxy training of survivors
  eval_examples: int = 1000
  eval_split: str = "validation"  # "held_out" when re-ranking
  stability_steps: int = 100  # stability protocol: ascent steps...
  stability_threshold: float = 1e8  # ...rejecting above this gradient norm
  stability_batch: int = 8
  stability_step_size: float = 0.01  # relative to each weight's norm
  seed: int = 0

  def __post_init__(self):
    unknown = sorted(set(self.anchors) - set(ANCHORS))
    if unknown or not self.anchors:
      raise ValueError(f"Unknown proxy anchors {unknown or '(none)'}; "
                       f"choose among {ANCHORS}.")
    for name in ("image_size", "width", "blocks", "batch_size", "groups",
                 "train_steps", "eval_examples", "stability_batch"):
      if getattr(self, name) < 1:
        raise ValueError(f"ProxyConfig.{name} must be at least 1; received "
                         f"{getattr(self, name)}.")
    if not 0 <= self.quality_steps <= self.train_steps:
      raise ValueError(f"quality_steps ({self.quality_steps}) must be between "
                       f"0 and train_steps ({self.train_steps}).")
    if self.eval_split not in ("validation", "held_out"):
      raise ValueError("ProxyConfig.eval_split must be 'validation' or "
                       f"'held_out'; received {self.eval_split!r}.")
    if self.dataset not in ("auto", "cifar10", "digits"):
      raise ValueError("ProxyConfig.dataset must be 'auto', 'cifar10' or "
                       f"'digits'; received {self.dataset!r}.")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: dict) -> "ProxyConfig":
    data = dict(data)
    data["anchors"] = tuple(data.get("anchors", ANCHORS))
    return cls(**data)


# -- data ----------------------------------------------------------------------

@dataclasses.dataclass
class ProxyData:
  """In-memory uint8 images (N, 32, 32, 3) and labels, three splits."""

  name: str
  train: tuple[np.ndarray, np.ndarray]
  validation: tuple[np.ndarray, np.ndarray]  # search fitness
  held_out: tuple[np.ndarray, np.ndarray]  # re-ranking only
  num_classes: int = 10


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1] == size:
    return images
  resized = tf.image.resize(images, [size, size], method="bilinear")
  return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def _split(images, labels, seed, validation, held_out):
  order = np.random.default_rng(seed).permutation(len(labels))
  images, labels = images[order], labels[order]
  v, h = validation, validation + held_out
  return ((images[h:], labels[h:]), (images[:v], labels[:v]),
          (images[v:h], labels[v:h]))


def load_data(config: ProxyConfig) -> ProxyData:
  """CIFAR-10 from TFDS when prepared (or required), else the digits."""
  if config.dataset in ("auto", "cifar10"):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder("cifar10", data_dir=config.tfds_data_dir)
    if builder.is_prepared():
      train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
      images, labels = train["image"], train["label"].astype(np.int64)
      splits = _split(_resize(images, config.image_size), labels, config.seed,
                      5000, 5000)
      return ProxyData("cifar10", *splits)
    if config.dataset == "cifar10":
      raise FileNotFoundError(
          f"TFDS cifar10 is not prepared in {builder.data_dir!r}. Prepare it "
          "where it can be downloaded (`tfds build cifar10 --data_dir=DIR`) "
          "and pass tfds_data_dir=DIR, or use dataset='digits'.")
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  images = np.repeat(gray[..., None], 3, axis=-1)
  splits = _split(_resize(images, config.image_size),
                  digits.target.astype(np.int64), config.seed, 300, 300)
  return ProxyData("digits", *splits)


def batches(split, batch_size: int, seed: int, repeat: bool = True):
  """A tf.data pipeline of normalized float images and labels."""
  images, labels = split
  dataset = tf.data.Dataset.from_tensor_slices((images, labels))
  if repeat:
    dataset = dataset.shuffle(len(labels), seed=seed).repeat()
  return dataset.batch(batch_size, drop_remainder=repeat).map(
      lambda x, y: ((tf.cast(x, tf.float32) - 127.5) / 64.0, y))


# -- anchors -------------------------------------------------------------------

NormFactory = Callable[..., tf_keras.layers.Layer]


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


def build_model(anchor: str, make_norm: NormFactory, config: ProxyConfig,
                num_classes: int = 10) -> tf_keras.Model:
  """The anchor with ``make_norm(nonlinearity=...)`` at every norm site."""
  inputs = tf_keras.Input((config.image_size, config.image_size, 3))
  features = _BUILDERS[anchor](inputs, make_norm, config)
  features = layers.GlobalAveragePooling2D()(features)
  return tf_keras.Model(inputs, layers.Dense(num_classes)(features),
                        name=f"{anchor}_proxy")
