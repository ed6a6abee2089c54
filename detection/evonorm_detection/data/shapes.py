r"""A tiny COCO-format instance-segmentation dataset, generated offline.

Rectangles, ellipses and triangles (categories 1, 2, 3) in random colours,
drawn without overlap on 128x128 crops of the two photographs scikit-learn
ships (``sklearn.datasets.load_sample_images``). Each object is a polygon;
its mask is that polygon rasterized by pycocotools, and the very same mask is
what is painted on the image, so boxes and masks are exact. Written as

* ``{train,val}-00000-of-00001.tfrecord``: Model Garden's detection
  ``tf.Example`` format (PNG image, normalized boxes, labels, PNG instance
  masks, numeric ``image/source_id``), read by Model Garden's Mask R-CNN
  input pipeline;
* ``instances_{train,val}.json``: COCO annotations (polygons), read by Model
  Garden's COCO evaluator (pycocotools).

  python -m evonorm_detection.data.shapes --output_dir=~/evonorm_data/shapes

It exists to smoke-test the detection pipeline on any machine, without a
network or COCO; it says nothing about how well a layer does on COCO.
"""

from __future__ import annotations

import json
import os

from absl import flags
import numpy as np
import tensorflow as tf
from official.vision.data import tf_example_builder
from pycocotools import mask as mask_lib

from evonorm_model_garden import cli

CATEGORIES = ({"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"},
              {"id": 3, "name": "triangle"})
IMAGE_SIZE = 128
SPLITS = {"train": 256, "val": 64}


def _polygon(category: int, box, rng) -> np.ndarray:
  """Vertices ``[[x, y], ...]`` of one shape inside ``box`` (x0, y0, x1, y1)."""
  x0, y0, x1, y1 = box
  if category == 1:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
  if category == 2:
    t = np.linspace(0.0, 2.0 * np.pi, 32, endpoint=False)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)
  apex = rng.uniform(x0, x1)
  return np.array([[apex, y0], [x1, y1], [x0, y1]], np.float64)


def _rasterize(polygon: np.ndarray, size: int) -> np.ndarray:
  rle = mask_lib.frPyObjects([polygon.ravel().tolist()], size, size)
  return mask_lib.decode(mask_lib.merge(rle)).astype(np.uint8)


def _backgrounds(rng, count: int, size: int) -> np.ndarray:
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images().images
  out = []
  for _ in range(count):
    photo = photos[rng.integers(len(photos))]
    crop = int(rng.integers(size, min(photo.shape[:2])))
    top = int(rng.integers(photo.shape[0] - crop + 1))
    left = int(rng.integers(photo.shape[1] - crop + 1))
    patch = photo[top:top + crop, left:left + crop]
    out.append(tf.image.resize(patch, (size, size), antialias=True).numpy())
  return np.clip(np.round(np.stack(out)), 0, 255).astype(np.uint8)


def _objects(rng, size: int):
  """1 to 4 non-overlapping shapes: (category, box, polygon, mask) each."""
  objects, taken = [], np.zeros((size, size), bool)
  for _ in range(int(rng.integers(1, 5))):
    for _ in range(20):  # a few tries to find free space
      w, h = rng.integers(size // 8, size // 2, 2)
      x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
      if not taken[y0:y0 + h, x0:x0 + w].any():
        break
    else:
      continue
    category = int(rng.integers(1, len(CATEGORIES) + 1))
    polygon = _polygon(category, (x0, y0, x0 + w, y0 + h), rng)
    mask = _rasterize(polygon, size)
    if mask.sum() < 16:
      continue
    taken[y0:y0 + h, x0:x0 + w] = True
    objects.append((category, polygon, mask))
  return objects


def _example(image: np.ndarray, image_id: int, objects) -> bytes:
  size = image.shape[0]
  boxes = []
  for _, _, mask in objects:
    ys, xs = np.nonzero(mask)
    boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4) / size
  builder = tf_example_builder.TfExampleBuilder()
  builder.add_image_matrix_feature(image, "PNG", str(image_id).encode())
  builder.add_boxes_feature(boxes[:, 0].tolist(), boxes[:, 2].tolist(),
                            boxes[:, 1].tolist(), boxes[:, 3].tolist(),
                            [c for c, _, _ in objects])
  builder.add_ints_feature("image/object/is_crowd", [0] * len(objects))
  if objects:
    builder.add_instance_mask_matrices_feature(
        np.stack([m for _, _, m in objects]))
  return builder.example.SerializeToString()


def _annotations(image_id: int, first_id: int, objects) -> list[dict]:
  out = []
  for k, (category, polygon, mask) in enumerate(objects):
    ys, xs = np.nonzero(mask)
    out.append({
        "id": first_id + k, "image_id": image_id, "category_id": category,
        "segmentation": [polygon.ravel().round(2).tolist()],
        "area": float(mask.sum()), "iscrowd": 0,
        "bbox": [float(xs.min()), float(ys.min()),
                 float(xs.max() + 1 - xs.min()),
                 float(ys.max() + 1 - ys.min())]})
  return out


def file_pattern(output_dir: str, split: str) -> str:
  return os.path.join(output_dir, f"{split}-*.tfrecord")


def annotation_file(output_dir: str, split: str = "val") -> str:
  return os.path.join(output_dir, f"instances_{split}.json")


def write_shapes_dataset(output_dir: str, splits=None, seed: int = 0) -> dict:
  """Writes the TFRecords and COCO JSON of each split (once).

  Files are written under temporary names and renamed, so an interrupted run
  leaves nothing a later run would mistake for data.

  Returns:
    ``{split: (tfrecord pattern, annotation file)}``.
  """
  splits = dict(SPLITS if splits is None else splits)
  output_dir = os.path.expanduser(output_dir)
  tf.io.gfile.makedirs(output_dir)
  rng = np.random.default_rng(seed)
  written = {}
  for split, count in splits.items():
    record = os.path.join(output_dir, f"{split}-00000-of-00001.tfrecord")
    coco = annotation_file(output_dir, split)
    written[split] = (file_pattern(output_dir, split), coco)
    if tf.io.gfile.exists(record) and tf.io.gfile.exists(coco):
      continue
    images = _backgrounds(rng, count, IMAGE_SIZE)
    dataset = {"images": [], "annotations": [],
               "categories": list(CATEGORIES)}
    with tf.io.TFRecordWriter(record + ".tmp") as writer:
      for image_id, image in enumerate(images, start=1):
        objects = _objects(rng, IMAGE_SIZE)
        colors = rng.integers(0, 256, (len(objects), 3))
        for (_, _, mask), color in zip(objects, colors):
          image[mask.astype(bool)] = color
        writer.write(_example(image, image_id, objects))
        dataset["images"].append({"id": image_id, "width": IMAGE_SIZE,
                                  "height": IMAGE_SIZE,
                                  "file_name": f"{split}_{image_id}.png"})
        dataset["annotations"] += _annotations(
            image_id, len(dataset["annotations"]) + 1, objects)
    with tf.io.gfile.GFile(coco + ".tmp", "w") as f:
      json.dump(dataset, f)
    tf.io.gfile.rename(record + ".tmp", record, overwrite=True)
    tf.io.gfile.rename(coco + ".tmp", coco, overwrite=True)
  return written


def main(argv):
  del argv
  for split, (pattern, coco) in write_shapes_dataset(
      flags.FLAGS.output_dir).items():
    print(f"{split}: {pattern} {coco}")


if __name__ == "__main__":
  flags.DEFINE_string("output_dir", os.path.join("~", "evonorm_data",
                                                 "shapes"),
                      "Where to write the TFRecords and annotations.")
  cli.run(main)
