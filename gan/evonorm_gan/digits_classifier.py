"""A small digits classifier for the quickstart's "digits IS/FID".

The Inception network of IS/FID cannot be downloaded here and knows nothing
of 8x8 digits; the quickstart instead measures its samples with a small
convolutional classifier trained once on scikit-learn's digits (at the
generator's resolution) and cached as a SavedModel whose signature maps
images in [-1, 1] to ``{"pool_3": features, "logits": logits}``, the
interface :class:`evonorm_gan.evaluation.Classifier` reads. Its features
are the 64-d input of the last layer.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorflow as tf
import tf_keras

from evonorm_gan import data as data_lib

CACHE_DIR = os.path.join(os.path.expanduser("~"), "evonorm_data",
                         "digits_classifier")


def _digits(resolution: int):
  images, labels = data_lib.digits_arrays()
  images = tf.map_fn(lambda x: data_lib.resize_and_crop(x, resolution),
                     tf.constant(images), fn_output_signature=tf.float32)
  return images.numpy(), labels


class _Serving(tf.Module):

  def __init__(self, features, classifier, resolution):
    super().__init__()
    self.features, self.classifier = features, classifier
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([None, resolution, resolution, 3], tf.float32,
                      name="images")])

  def _serve(self, images):
    pool = self.features(images, training=False)
    return {"pool_3": pool, "logits": self.classifier(pool)}


def train_and_save(path: str, resolution: int = 32, epochs: int = 8,
                   seed: int = 0) -> float:
  """Trains the classifier, writes the SavedModel; returns its accuracy on
  held-out digits."""
  tf_keras.utils.set_random_seed(seed)
  images, labels = _digits(resolution)
  order = np.random.default_rng(seed).permutation(len(labels))
  train, test = order[:1500], order[1500:]
  features = tf_keras.Sequential([
      tf_keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
      tf_keras.layers.MaxPool2D(),
      tf_keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
      tf_keras.layers.MaxPool2D(),
      tf_keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
      tf_keras.layers.GlobalAveragePooling2D(),
      tf_keras.layers.Dense(64, activation="relu"),
  ])
  classifier = tf_keras.layers.Dense(10)
  model = tf_keras.Sequential([features, classifier])
  model.compile(tf_keras.optimizers.Adam(2e-3),
                tf_keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True), metrics=["accuracy"])
  model.fit(images[train], labels[train], batch_size=64, epochs=epochs,
            verbose=0)
  accuracy = float(model.evaluate(images[test], labels[test], verbose=0)[1])
  module = _Serving(features, classifier, resolution)
  # Written aside and renamed: parallel workers that train it at the same
  # time leave one complete copy.
  staging = f"{path}.tmp{os.getpid()}"
  tf.saved_model.save(module, staging,
                      signatures={"serving_default": module.serve})
  try:
    os.rename(staging, path)
  except OSError:
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
      raise
    shutil.rmtree(staging, ignore_errors=True)
  return accuracy


def cached(resolution: int = 32, cache_dir: str = CACHE_DIR) -> str:
  """The classifier's SavedModel path, trained on first use."""
  path = os.path.join(os.path.expanduser(cache_dir), f"res{resolution}")
  if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    tf.io.gfile.makedirs(os.path.dirname(path))
    train_and_save(path, resolution)
  return path


def real_images(resolution: int = 32) -> np.ndarray:
  """The digits as uint8 images at ``resolution`` (FID's reference set)."""
  images, _ = _digits(resolution)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
