"""Reading a detector's output: one box per object, matched to the truth.

Model Garden's Mask R-CNN runs non-maximum suppression per class, so one
object often carries several boxes of different classes (an ellipse found as
an ellipse 0.95 and as a triangle 0.60). COCO's AP rightly scores that
output as it is; for a picture and for telling how well the classes are told
apart, this module keeps one box per object: a score threshold, then
class-agnostic non-maximum suppression (the highest-scoring box of
overlapping ones wins, whatever its class). Ground truth is read from the
COCO annotations (pycocotools).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from pycocotools import coco as coco_lib

from evonorm_detection.data import shapes

MIN_SCORE = 0.5
NMS_IOU = 0.3
MATCH_IOU = 0.5


def ground_truth(annotation_file: str, image_ids) -> list[list[dict]]:
  """Per image: its objects as ``{"category", "box" [y0, x0, y1, x1],
  "mask" HxW uint8}``."""
  coco = coco_lib.COCO(annotation_file) if isinstance(
      annotation_file, str) else annotation_file
  out = []
  for image_id in image_ids:
    objects = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[int(image_id)])):
      x, y, w, h = ann["bbox"]
      objects.append({"category": int(ann["category_id"]),
                      "box": np.array([y, x, y + h, x + w], np.float64),
                      "mask": coco.annToMask(ann)})
    out.append(objects)
  return out


def kept_detections(outputs: dict, i: int, min_score: float = MIN_SCORE,
                    iou: float = NMS_IOU) -> list[dict]:
  """Image ``i``'s detections above ``min_score`` after class-agnostic NMS,
  best first: ``{"category", "score", "box" [y0, x0, y1, x1] in the
  original image's pixels, "mask" (the box's mask, [M, M])}``."""
  n = int(outputs["num_detections"][i])
  scale = np.tile(outputs["image_info"][i, 2], 2)  # [y, x] resize factors
  boxes = outputs["detection_boxes"][i, :n] / scale
  scores = outputs["detection_scores"][i, :n]
  keep = scores >= min_score
  boxes, scores = boxes[keep], scores[keep]
  index = np.flatnonzero(keep)
  chosen = tf.image.non_max_suppression(
      boxes.astype(np.float32), scores.astype(np.float32),
      max_output_size=max(len(scores), 1), iou_threshold=iou).numpy()
  return [{"category": int(outputs["detection_classes"][i, index[k]]),
           "score": float(scores[k]), "box": boxes[k],
           "mask": outputs["detection_masks"][i, index[k]]}
          for k in chosen]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
  top, left = max(a[0], b[0]), max(a[1], b[1])
  bottom, right = min(a[2], b[2]), min(a[3], b[3])
  inter = max(0.0, bottom - top) * max(0.0, right - left)
  union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
           - inter)
  return inter / union if union > 0 else 0.0


def confusion(truths: list[list[dict]], detections: list[list[dict]],
              num_classes: int = len(shapes.CATEGORIES),
              iou: float = MATCH_IOU) -> np.ndarray:
  """``[num_classes + 1, num_classes + 1]`` counts: row = true class (last
  row: no object, i.e. a detection matching nothing), column = the class of
  the kept detection matched to it (last column: missed). Each true object
  is matched greedily, best detection first, to an unmatched one with box
  IoU at least ``iou``."""
  counts = np.zeros((num_classes + 1, num_classes + 1), np.int64)
  for objects, kept in zip(truths, detections):
    matched = set()
    for det in kept:  # best score first
      candidates = [(box_iou(det["box"], obj["box"]), j)
                    for j, obj in enumerate(objects) if j not in matched]
      overlap, j = max(candidates, default=(0.0, None))
      if j is not None and overlap >= iou:
        matched.add(j)
        counts[objects[j]["category"] - 1, det["category"] - 1] += 1
      else:
        counts[num_classes, det["category"] - 1] += 1
    for j, obj in enumerate(objects):
      if j not in matched:
        counts[obj["category"] - 1, num_classes] += 1
  return counts


def confusion_summary(counts: np.ndarray) -> dict:
  """Objects, found (matched), correctly classified among found, and
  detections matching no object."""
  k = counts.shape[0] - 1
  objects = int(counts[:k].sum())
  found = int(counts[:k, :k].sum())
  correct = int(np.trace(counts[:k, :k]))
  return {"objects": objects, "found": found, "correct_class": correct,
          "recall": found / objects if objects else 0.0,
          "class_accuracy": correct / found if found else 0.0,
          "false_detections": int(counts[k].sum())}


def confusion_table(counts: np.ndarray) -> list[str]:
  """The confusion counts as Markdown rows."""
  names = [c["name"] for c in shapes.CATEGORIES]
  lines = ["| true \\ detected | " + " | ".join(names) + " | missed |",
           "|---|" + "---:|" * (len(names) + 1)]
  for row, name in zip(counts, names + ["(no object)"]):
    lines.append(f"| {name} | " + " | ".join(str(int(v)) for v in row) +
                 " |")
  return lines


def _paste_mask(overlay, box, mask, color):
  top, left = int(max(0, np.floor(box[0]))), int(max(0, np.floor(box[1])))
  bottom = int(min(overlay.shape[0], np.ceil(box[2])))
  right = int(min(overlay.shape[1], np.ceil(box[3])))
  if bottom > top and right > left:
    if mask.shape != (bottom - top, right - left):
      mask = tf.image.resize(mask[..., None].astype(np.float32),
                             (bottom - top, right - left)).numpy()[..., 0]
    overlay[top:bottom, left:right][mask > 0.5] = (*color[:3], 0.45)


def _draw(ax, plt, image, objects, title):
  names = {c["id"]: c["name"] for c in shapes.CATEGORIES}
  ax.imshow(image.astype(np.float32) / 255.0)
  overlay = np.zeros(image.shape[:2] + (4,), np.float32)
  for obj in objects:
    color = plt.cm.tab10(obj["category"] - 1)
    y0, x0, y1, x1 = obj["box"]
    if obj["mask"].shape == image.shape[:2]:
      full = obj["mask"].astype(bool)
      overlay[full] = (*color[:3], 0.45)
    else:
      _paste_mask(overlay, obj["box"], obj["mask"], color)
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                               color=color, linewidth=1.5))
    label = names.get(obj["category"], "?")
    if "score" in obj:
      label += f" {obj['score']:.2f}"
    ax.text(x0, y0, label, color="white", fontsize=7,
            bbox=dict(facecolor=color, alpha=0.7, pad=1, linewidth=0))
  ax.imshow(overlay)
  ax.set_title(title, fontsize=8)
  ax.set_axis_off()


def draw(images, truths, detections, path: str, title: str):
  """Ground truth (top row) above the kept detections (bottom row), one
  column per image; colours are classes."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, len(images), figsize=(2.8 * len(images), 6.4),
                           squeeze=False)
  for i, image in enumerate(images):
    _draw(axes[0][i], plt, image, truths[i], "ground truth")
    _draw(axes[1][i], plt, image, detections[i], "detected")
  fig.suptitle(f"{title}\nground truth (top); detections with score >= "
               f"{MIN_SCORE}, one box per object (bottom)", fontsize=10)
  fig.tight_layout(h_pad=1.2)
  fig.savefig(path, dpi=110)
  plt.close(fig)
