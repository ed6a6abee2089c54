"""Training images and labels for the GAN, as a ``tf.data`` pipeline.

``source: tfds`` reads a prepared TFDS dataset (ImageNet is
``imagenet2012``; any TFDS image dataset with a label feature works) from
``tfds_data_dir``; nothing is downloaded. ``source: mnist5k`` and
``source: digits`` are the offline datasets of :mod:`evonorm_layers.datasets`
(their training split): MNIST's 28x28 digits are zero-padded to 32x32 first,
as MNIST GANs usually take them. Images are resized (shorter side, area
filter) and center-cropped to the generator's resolution, scaled to
[-1, 1].
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from evonorm_layers import datasets


OFFLINE_SOURCES = tuple(datasets.DATASETS)


def check_available(data_config):
  """Raises a clear error if the configured dataset is not there."""
  if data_config.source in OFFLINE_SOURCES:
    return
  if data_config.source != "tfds":
    raise ValueError(f"data.source={data_config.source!r}: use 'tfds', "
                     f"{', '.join(repr(s) for s in OFFLINE_SOURCES)}.")
  builder = tfds.builder(data_config.tfds_name,
                         data_dir=data_config.tfds_data_dir or None)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS dataset {data_config.tfds_name!r} (data.tfds_name) is not "
        f"prepared in {builder.data_dir!r}. Prepare it once where it can be "
        f"downloaded (`tfds build {data_config.tfds_name} --data_dir=DIR`; "
        "ImageNet needs its archives in DIR/downloads/manual first) and pass "
        "data.tfds_data_dir=DIR. Nothing is downloaded at run time.")


def resize_and_crop(image: tf.Tensor, resolution: int) -> tf.Tensor:
  """Shorter side to ``resolution``, center crop, float in [-1, 1].

  ``image`` is ``[H, W]``, ``[H, W, C]`` or a batch ``[N, H, W, C]`` of
  images of one size (resized together, as fast as one)."""
  image = tf.cast(image, tf.float32)
  if image.shape.rank == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  shape = tf.cast(tf.shape(image)[-3:-1], tf.float32)
  scale = resolution / tf.reduce_min(shape)
  size = tf.cast(tf.math.ceil(shape * scale), tf.int32)
  image = tf.image.resize(image, size, method="area", antialias=True)
  image = tf.image.resize_with_crop_or_pad(image, resolution, resolution)
  return image / 127.5 - 1.0


def offline_arrays(source: str, split: str = "train"):
  """An offline dataset's split as uint8 ``[N, H, W]`` images (MNIST padded
  to 32x32) and int32 labels."""
  images, labels = datasets.load(source, split)
  if source == "mnist5k":
    images = datasets.pad_to(images, 32)
  return images, labels.astype(np.int32)


def offline_images(source: str, resolution: int, split: str = "train"):
  """An offline dataset's split as the GAN sees it: float32 RGB images in
  [-1, 1] at ``resolution`` and int32 labels, in memory."""
  images, labels = offline_arrays(source, split)
  return resize_and_crop(images[..., None], resolution).numpy(), labels


def dataset(data_config, resolution: int, batch_size: int,
            input_context: tf.distribute.InputContext | None = None,
            seed: int | None = None) -> tf.data.Dataset:
  """Infinite, shuffled batches of ``(images [-1, 1], labels int32)``."""
  if data_config.source in OFFLINE_SOURCES:
    # Small and in memory: resized once, not in every step's input.
    ds = tf.data.Dataset.from_tensor_slices(
        offline_images(data_config.source, resolution))
    preprocess = None
  else:
    ds = tfds.load(data_config.tfds_name, split=data_config.split,
                   data_dir=data_config.tfds_data_dir or None,
                   download=False, shuffle_files=True)
    ds = ds.map(lambda ex: (ex[data_config.image_key],
                            ex[data_config.label_key]))
    preprocess = lambda image, label: (resize_and_crop(image, resolution),
                                       tf.cast(label, tf.int32))
  if input_context is not None:
    ds = ds.shard(input_context.num_input_pipelines,
                  input_context.input_pipeline_id)
  ds = ds.shuffle(data_config.shuffle_buffer_size, seed=seed).repeat()
  if preprocess is not None:
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size, drop_remainder=True).prefetch(
      tf.data.AUTOTUNE)
