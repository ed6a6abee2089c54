r"""Detection quickstart: a small Mask R-CNN with EvoNorm-B0, offline on a CPU.

  python -m evonorm_detection.quickstart            # a few minutes
  python -m evonorm_detection.quickstart --layer=evonorm_s0

Writes the generated shapes dataset (``evonorm_detection.data.shapes``:
shapes with exact boxes and masks on crops of scikit-learn's sample photos),
trains the ``evonorm_maskrcnn_shapes_quickstart`` experiment (a narrow
ResNet-18-FPN Mask R-CNN with the chosen layer at every norm site) with Model
Garden's trainer, evaluates COCO box and mask AP with Model Garden's COCO
evaluator, exports a SavedModel with the detection serving module, reloads
it, and draws its boxes and masks on validation images
(``WORKDIR/predictions.png``). A smoke test of the pipeline, not a result:
the data are toy shapes and the training is minutes long.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tf_keras

from evonorm_detection.data import shapes
from evonorm_layers import cli
from evonorm_vision import export_saved_model
from evonorm_vision import run_training
# pylint: enable=g-import-not-at-top,wrong-import-position

EXPERIMENT = "evonorm_maskrcnn_shapes_quickstart"

_LAYER = flags.DEFINE_string("layer", "evonorm_b0",
                             "The registered layer at every norm site.")
_WORKDIR = flags.DEFINE_string("workdir", "evonorm_detection_quickstart",
                               "Data, checkpoints, the export and pictures.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Passes over the 256 training "
                               "images.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", None, "Training steps; by default "
                              "--epochs passes over the training images.",
                              lower_bound=1)
_OVERRIDE = flags.DEFINE_string("params_override", "",
                                "Further experiment overrides.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print TensorFlow's and the "
                             "trainer's logs instead of keeping them in "
                             "WORKDIR/<layer>/train.log.")


def experiment_params(layer: str, data_dir: str, epochs: int,
                      params_override: str = "", steps: int | None = None):
  """The quickstart experiment for ``layer`` on the data in ``data_dir``."""
  overrides = ",".join(filter(None, [
      f"task.model.norm_activation.type={layer}",
      f"task.train_data.input_path={shapes.file_pattern(data_dir, 'train')}",
      "task.validation_data.input_path="
      f"{shapes.file_pattern(data_dir, 'val')}",
      f"task.annotation_file={shapes.annotation_file(data_dir, 'val')}",
      params_override]))
  params = export_saved_model.load_params(EXPERIMENT, (), overrides)
  steps_per_epoch = (shapes.SPLITS["train"] //
                     params.task.train_data.global_batch_size)
  steps = steps or epochs * steps_per_epoch
  boundary = max(1, int(0.8 * steps))
  return export_saved_model.load_params(EXPERIMENT, (), ",".join([
      overrides, f"trainer.train_steps={steps}",
      "trainer.optimizer_config.learning_rate.stepwise.boundaries="
      f"[{boundary}]",
      f"trainer.validation_interval={steps}"]))


def validation_images(data_dir: str, count: int) -> np.ndarray:
  images = []
  for record in tf.data.TFRecordDataset(
      tf.io.gfile.glob(shapes.file_pattern(data_dir, "val"))).take(count):
    example = tf.train.Example.FromString(record.numpy())
    encoded = example.features.feature["image/encoded"].bytes_list.value[0]
    images.append(tf.io.decode_png(encoded, channels=3).numpy())
  return np.stack(images)


def draw_predictions(images, outputs, path: str, min_score: float = 0.5):
  """Boxes, masks (pasted into their boxes) and classes on each image."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = {c["id"]: c["name"] for c in shapes.CATEGORIES}
  fig, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.2))
  for i, (ax, image) in enumerate(zip(np.atleast_1d(axes), images)):
    scale = outputs["image_info"][i, 2]  # [y, x] resize factors
    shown = image.astype(np.float32) / 255.0
    ax.imshow(shown)
    overlay = np.zeros(image.shape[:2] + (4,), np.float32)
    for k in range(int(outputs["num_detections"][i])):
      score = float(outputs["detection_scores"][i, k])
      if score < min_score:
        continue
      y0, x0, y1, x1 = outputs["detection_boxes"][i, k] / np.tile(scale, 2)
      color = plt.cm.tab10(k % 10)
      top, left = int(max(0, np.floor(y0))), int(max(0, np.floor(x0)))
      bottom = int(min(image.shape[0], np.ceil(y1)))
      right = int(min(image.shape[1], np.ceil(x1)))
      if bottom > top and right > left:
        mask = tf.image.resize(outputs["detection_masks"][i, k][..., None],
                               (bottom - top, right - left)).numpy()[..., 0]
        overlay[top:bottom, left:right][mask > 0.5] = (*color[:3], 0.45)
      ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                 color=color, linewidth=1.5))
      label = names.get(int(outputs["detection_classes"][i, k]), "?")
      ax.text(x0, y0, f"{label} {score:.2f}", color="white", fontsize=7,
              bbox=dict(facecolor=color, alpha=0.7, pad=1, linewidth=0))
    ax.imshow(overlay)
    ax.set_axis_off()
  fig.suptitle("Mask R-CNN on generated shapes (validation images)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(layer: str, workdir: str, epochs: int, params_override: str = "",
        verbose: bool = False, steps: int | None = None) -> dict:
  """Trains, evaluates, exports, reloads and draws; returns the results."""
  data_dir = os.path.join(workdir, "data")
  with cli.user_errors():  # bad names and overrides, before any work
    params = experiment_params(layer, data_dir, epochs, params_override,
                               steps)
  shapes.write_shapes_dataset(data_dir)
  model_dir = os.path.join(workdir, layer)
  tf_keras.backend.clear_session()
  logs = run_training.train_and_evaluate(params, model_dir, desc=layer,
                                              verbose=verbose)
  export_dir = os.path.join(workdir, "export", layer)
  with run_training.logs_to(
      None if verbose else os.path.join(model_dir, "train.log")):
    export_saved_model.export(params, model_dir, export_dir)
  served = tf.saved_model.load(export_dir).signatures["serving_default"]
  (input_name,) = served.structured_input_signature[1]
  images = validation_images(data_dir, 4)
  outputs = {k: v.numpy() for k, v in
             served(**{input_name: tf.constant(images)}).items()}
  picture = os.path.join(workdir, "predictions.png")
  draw_predictions(images, outputs, picture)
  return dict(layer=layer, box_ap=float(logs["AP"]),
              mask_ap=float(logs["mask_AP"]),
              detections=int(np.sum(outputs["detection_scores"] >= 0.5)),
              saved_model=export_dir, picture=picture)


def main(argv):
  del argv
  r = run(_LAYER.value, _WORKDIR.value, _EPOCHS.value, _OVERRIDE.value,
          _VERBOSE.value, _STEPS.value)
  print("\n| layer | box AP | mask AP | detections (score >= 0.5) on 4 "
        "validation images, reloaded SavedModel |")
  print("|---|---:|---:|---:|")
  print(f"| {r['layer']} | {r['box_ap']:.3f} | {r['mask_ap']:.3f} | "
        f"{r['detections']} |")
  print(f"\nSavedModel: {r['saved_model']}\nPredictions: {r['picture']}\n"
        "(A smoke test on toy shapes, not a result.)")


if __name__ == "__main__":
  app.run(main)
