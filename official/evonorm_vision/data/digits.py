r"""The 8x8 digits images scikit-learn ships, as Model Garden TFRecords.

scikit-learn's wheel contains the UCI optical-recognition digits (1797 images,
10 classes), so this dataset is available offline on any machine with the
project installed. Images are scaled from 0..16 to 0..255 and PNG-encoded in
``tf.train.Example`` records with Model Garden's classification keys
(``image/encoded``, ``image/class/label``). The split is stratified and fixed
(seed 0): 1437 training and 360 validation images.

  python -m evonorm_vision.data.digits --output_dir=~/evonorm_data/digits
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

NUM_CLASSES = 10
VALIDATION_PER_CLASS = 36  # 360 validation images
_SPLITS = ("train", "validation")


def _split_indices(labels: np.ndarray):
  rng = np.random.default_rng(0)
  validation = []
  for label in range(NUM_CLASSES):
    members = np.flatnonzero(labels == label)
    validation.extend(rng.choice(members, VALIDATION_PER_CLASS,
                                 replace=False))
  validation = np.sort(np.asarray(validation))
  train = np.setdiff1d(np.arange(len(labels)), validation)
  return {"train": rng.permutation(train), "validation": validation}


def _example(image: np.ndarray, label: int) -> bytes:
  png = tf.io.encode_png(image[..., None]).numpy()
  feature = {
      "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[png])),
      "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[b"png"])),
      "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
          value=[label])),
  }
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def file_pattern(output_dir: str, split: str) -> str:
  return os.path.join(output_dir, f"{split}-*.tfrecord")


def write_digits_tfrecords(output_dir: str) -> dict[str, str]:
  """Writes the train/validation TFRecords (once) and returns their patterns.

  Files are written under temporary names and renamed, so an interrupted
  run leaves no partial file that a later run would mistake for data.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  output_dir = os.path.expanduser(output_dir)
  tf.io.gfile.makedirs(output_dir)
  patterns = {split: file_pattern(output_dir, split) for split in _SPLITS}
  if all(tf.io.gfile.glob(p) for p in patterns.values()):
    return patterns
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  for split, indices in _split_indices(digits.target).items():
    path = os.path.join(output_dir, f"{split}-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path + ".tmp") as writer:
      for i in indices:
        writer.write(_example(images[i], int(digits.target[i])))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
  return patterns


def main(argv):
  del argv
  patterns = write_digits_tfrecords(flags.FLAGS.output_dir)
  for split, pattern in patterns.items():
    print(f"{split}: {pattern}")


if __name__ == "__main__":
  flags.DEFINE_string("output_dir", os.path.join("~", "evonorm_data",
                                                 "digits"),
                      "Where to write the TFRecords.")
  app.run(main)
