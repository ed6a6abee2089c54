"""The detection quickstart's steps, for the quickstart and the benchmarks.

Kept apart from :mod:`evonorm_detection.quickstart` (which only defines its
flags and prints) so that ``bench/detection_quality.py`` can reuse them
without defining the quickstart's absl flags a second time.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tf_keras

from evonorm_detection import predictions
from evonorm_detection.data import shapes
from evonorm_model_garden import cli
from evonorm_model_garden import experiments
from evonorm_model_garden import export
from evonorm_model_garden import run_training

EXPERIMENT = "evonorm_maskrcnn_shapes_quickstart"
PICTURED = 4  # validation images drawn


def experiment_params(layer: str, data_dir: str, epochs: int,
                      params_override: str = "", steps: int | None = None):
  """The quickstart experiment for ``layer`` on the data in ``data_dir``.

  ``steps`` (by default ``epochs`` passes over the training images) sets the
  training length, the learning-rate drop at 80% of it and the validation
  interval; ``params_override`` is applied last, so its keys (a
  ``trainer.train_steps`` included) win over all of these.
  """
  base = [f"task.model.norm_activation.type={layer}",
          "task.train_data.input_path="
          f"{shapes.file_pattern(data_dir, 'train')}",
          "task.validation_data.input_path="
          f"{shapes.file_pattern(data_dir, 'val')}",
          f"task.annotation_file={shapes.annotation_file(data_dir, 'val')}"]

  def load(*overrides):
    return experiments.load_params(
        EXPERIMENT, (), ",".join(filter(None, [*base, *overrides,
                                               params_override])))

  batch = load().task.train_data.global_batch_size
  steps = steps or epochs * (shapes.SPLITS["train"] // batch)
  steps = load(f"trainer.train_steps={steps}").trainer.train_steps
  return load(f"trainer.train_steps={steps}",
              "trainer.optimizer_config.learning_rate.stepwise.boundaries="
              f"[{max(1, int(0.8 * steps))}]",
              f"trainer.validation_interval={steps}")


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
        verbose: bool = False, steps: int | None = None,
        picture_name: str = "predictions.png") -> dict:
  """Trains, evaluates, exports, reloads and draws (``WORKDIR/
  picture_name``); returns the results."""
  data_dir = os.path.join(workdir, "data")
  with cli.user_errors():  # bad names and overrides, before any work
    cli.check_output_dir("--workdir", workdir)
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
    export.export(params, model_dir, export_dir)
  images, truths, kept, counts = read_predictions(export_dir, data_dir)
  picture = os.path.join(workdir, picture_name)
  predictions.draw(images[:PICTURED], truths[:PICTURED], kept[:PICTURED],
                   picture, f"Mask R-CNN ({layer}) on generated shapes, "
                   "validation images")
  return dict(layer=layer, box_ap=float(logs["AP"]),
              mask_ap=float(logs["mask_AP"]), confusion=counts.tolist(),
              **predictions.confusion_summary(counts),
              saved_model=export_dir, picture=picture)
