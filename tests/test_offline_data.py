"""The offline datasets: fixed stratified splits, and their TFRecords as
Model Garden's classification input pipeline reads them."""

import numpy as np
import pytest
from official.vision.ops import preprocess_ops

from evonorm_layers import datasets
from evonorm_model_garden import experiments
from evonorm_vision.data import offline as offline_data


def _rows(images):
  return {image.tobytes() for image in images}


@pytest.mark.parametrize("name, train, validation", [
    ("mnist5k", 4000, 1000), ("digits", 1437, 360)])
def test_splits_are_fixed_stratified_and_disjoint(name, train, validation):
  train_x, train_y = datasets.load(name, "train")
  val_x, val_y = datasets.load(name, "validation")
  all_x, all_y = datasets.load(name)
  assert len(train_y) == train == datasets.split_size(name, "train")
  assert len(val_y) == validation == datasets.split_size(name, "validation")
  assert train_x.dtype == np.uint8 and train_y.dtype == np.int64
  size = datasets.info(name).size
  assert train_x.shape[1:] == val_x.shape[1:] == (size, size)
  # Every class equally often in the validation split, the rest in train.
  np.testing.assert_array_equal(np.bincount(val_y, minlength=10),
                                [validation // 10] * 10)
  np.testing.assert_array_equal(
      np.bincount(train_y, minlength=10) + np.bincount(val_y, minlength=10),
      np.bincount(all_y, minlength=10))
  # Disjoint, and together the whole dataset (MNIST has no duplicates).
  if name == "mnist5k":
    assert not _rows(train_x) & _rows(val_x)
    assert _rows(train_x) | _rows(val_x) == _rows(all_x)
  # Fixed: the same split every time.
  again_x, again_y = datasets.load(name, "validation")
  np.testing.assert_array_equal(again_x, val_x)
  np.testing.assert_array_equal(again_y, val_y)
  assert 0 < train_x.mean() < 255


def test_mnist5k_is_mnist():
  images, labels = datasets.load("mnist5k")
  assert images.shape == (5000, 28, 28) and images.max() == 255
  np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
  # MNIST's digits are centred by their centre of mass in the 28x28 frame:
  # the border is almost empty, and the image is not transposed (digits are
  # taller than wide).
  mean = images.astype(np.float64).mean(axis=0)
  assert mean[:2].mean() < 2 and mean[-2:].mean() < 2
  assert mean[10:18, 10:18].mean() > 50
  rows, cols = (mean > 30).any(axis=1).sum(), (mean > 30).any(axis=0).sum()
  assert rows > cols


def test_bad_names_are_clear_errors():
  with pytest.raises(ValueError, match="Unknown offline dataset 'mnist'.*"
                     "digits, mnist5k"):
    datasets.load("mnist")
  with pytest.raises(ValueError, match="Unknown split 'test' of mnist5k"):
    datasets.load("mnist5k", "test")


def test_pad_to_centres():
  images = np.ones((2, 28, 28), np.uint8)
  padded = datasets.pad_to(images, 32)
  assert padded.shape == (2, 32, 32)
  assert padded[:, 2:30, 2:30].min() == 1 and padded.sum() == images.sum()
  with pytest.raises(ValueError, match="Cannot pad 28x28 images to 16x16"):
    datasets.pad_to(images, 16)


def test_tfrecords_read_by_the_model_garden_task(tmp_path):
  """The validation TFRecords through the experiment's own input pipeline
  (Model Garden's decoder and parser): the padded 32x32 digits, in order,
  with their labels."""
  patterns = offline_data.write_tfrecords("mnist5k", str(tmp_path))
  params = experiments.load_params(
      "evonorm_resnet_mnist5k", (),
      f"task.validation_data.input_path={patterns['validation']},"
      "task.validation_data.global_batch_size=50")
  from official.core import task_factory  # pylint: disable=g-import-not-at-top
  task = task_factory.get_task(params.task)
  images, labels = next(iter(task.build_inputs(params.task.validation_data)))
  want_x, want_y = datasets.load("mnist5k", "validation")
  np.testing.assert_array_equal(labels.numpy(), want_y[:50])
  assert images.shape == (50, 32, 32, 3)
  mean = np.array(preprocess_ops.MEAN_RGB, np.float32)
  std = np.array(preprocess_ops.STDDEV_RGB, np.float32)
  pixels = images.numpy() * std + mean
  want = datasets.pad_to(want_x[:50], 32).astype(np.float32)
  for channel in range(3):
    np.testing.assert_allclose(pixels[..., channel], want, atol=0.5)
  # Written once: a second call finds the files and keeps them.
  assert offline_data.write_tfrecords("mnist5k", str(tmp_path)) == patterns


def test_search_proxy_data_from_mnist5k():
  """--dataset=mnist5k: the search trains on 3000 and validates on 1000 of
  the training split (drawn by its seed); the fixed validation split is its
  held-out set, seen only when re-ranking."""
  from evonorm_layers.search import proxy_config  # pylint: disable=g-import-not-at-top
  from evonorm_layers.search import proxy_data  # pylint: disable=g-import-not-at-top
  data = proxy_data.load_data(proxy_config.ProxyConfig(dataset="mnist5k",
                                               image_size=16, seed=1))
  assert data.name == "mnist5k"
  assert [len(s[1]) for s in (data.train, data.validation, data.held_out)
          ] == [3000, 1000, 1000]
  assert data.train[0].shape[1:] == (16, 16, 3)
  assert data.train[0].dtype == np.uint8
  _, held_labels = datasets.load("mnist5k", "validation")
  np.testing.assert_array_equal(data.held_out[1], held_labels)
  train_rows = _rows(data.train[0]) | _rows(data.validation[0])
  assert not train_rows & _rows(data.held_out[0])
  other = proxy_data.load_data(proxy_config.ProxyConfig(dataset="mnist5k",
                                                image_size=16, seed=2))
  assert not np.array_equal(other.validation[1], data.validation[1])
