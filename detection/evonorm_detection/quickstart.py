r"""Detection quickstart: a small Mask R-CNN with EvoNorm-B0, offline on a CPU.

  python -m evonorm_detection.quickstart            # a few minutes
  python -m evonorm_detection.quickstart --layer=evonorm_s0

Writes the generated shapes dataset (``evonorm_detection.data.shapes``:
shapes with exact boxes and masks on crops of scikit-learn's sample photos),
trains the ``evonorm_maskrcnn_shapes_quickstart`` experiment (a narrow
ResNet-18-FPN Mask R-CNN with the chosen layer at every norm site) with Model
Garden's trainer, evaluates COCO box and mask AP with Model Garden's COCO
evaluator, exports a SavedModel with the detection serving module, reloads
it, runs it on the 64 validation images and prints how many objects it found
and how often of the right class (one box per object:
:mod:`evonorm_detection.predictions`), and draws the ground truth above its
boxes and masks (``WORKDIR/predictions.png``). A check of the pipeline, not
a COCO result: the data are toy shapes and the training is minutes long.
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

from evonorm_detection import predictions
from evonorm_detection.data import shapes
from evonorm_layers import cli
from evonorm_vision import export_saved_model
from evonorm_vision import run_training
# pylint: enable=g-import-not-at-top,wrong-import-position

EXPERIMENT = "evonorm_maskrcnn_shapes_quickstart"
PICTURED = 4  # validation images drawn

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


def validation_images(data_dir: str) -> np.ndarray:
  """The validation images (uint8) in the order of their image ids 1..N."""
  images = []
  for record in tf.data.TFRecordDataset(
      tf.io.gfile.glob(shapes.file_pattern(data_dir, "val"))):
    example = tf.train.Example.FromString(record.numpy())
    encoded = example.features.feature["image/encoded"].bytes_list.value[0]
    images.append(tf.io.decode_png(encoded, channels=3).numpy())
  return np.stack(images)


def serve(export_dir: str, images: np.ndarray, batch_size: int = 16):
  """The reloaded SavedModel's outputs on ``images``, as NumPy arrays."""
  served = tf.saved_model.load(export_dir).signatures["serving_default"]
  (input_name,) = served.structured_input_signature[1]
  batches = [{k: v.numpy() for k, v in served(**{input_name: tf.constant(
      images[i:i + batch_size])}).items()}
             for i in range(0, len(images), batch_size)]
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def read_predictions(export_dir: str, data_dir: str):
  """Every validation image, its ground truth and its kept detections (one
  box per object), and the class confusion counts."""
  images = validation_images(data_dir)
  outputs = serve(export_dir, images)
  truths = predictions.ground_truth(shapes.annotation_file(data_dir, "val"),
                                    range(1, len(images) + 1))
  kept = [predictions.kept_detections(outputs, i) for i in range(len(images))]
  return images, truths, kept, predictions.confusion(truths, kept)


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
  images, truths, kept, counts = read_predictions(export_dir, data_dir)
  picture = os.path.join(workdir, "predictions.png")
  predictions.draw(images[:PICTURED], truths[:PICTURED], kept[:PICTURED],
                   picture, f"Mask R-CNN ({layer}) on generated shapes, "
                   "validation images")
  return dict(layer=layer, box_ap=float(logs["AP"]),
              mask_ap=float(logs["mask_AP"]), confusion=counts.tolist(),
              **predictions.confusion_summary(counts),
              saved_model=export_dir, picture=picture)


def main(argv):
  del argv
  r = run(_LAYER.value, _WORKDIR.value, _EPOCHS.value, _OVERRIDE.value,
          _VERBOSE.value, _STEPS.value)
  print("\n| layer | box AP | mask AP | objects found | of those, right "
        "class | false detections |")
  print("|---|---:|---:|---:|---:|---:|")
  print(f"| {r['layer']} | {r['box_ap']:.3f} | {r['mask_ap']:.3f} | "
        f"{r['found']}/{r['objects']} | {r['correct_class']}/{r['found']} | "
        f"{r['false_detections']} |")
  print(f"\nClasses of the {r['objects']} validation objects against the "
        "detections matched to them (reloaded SavedModel; score >= "
        f"{predictions.MIN_SCORE}, one box per object, box IoU >= "
        f"{predictions.MATCH_IOU}):\n")
  print("\n".join(predictions.confusion_table(np.asarray(r["confusion"]))))
  print(f"\nSavedModel: {r['saved_model']}\nPredictions: {r['picture']}\n"
        "(Toy shapes and minutes of training: a check of the pipeline, not "
        "a COCO result.)")


if __name__ == "__main__":
  app.run(main)
