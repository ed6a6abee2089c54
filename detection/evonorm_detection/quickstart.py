r"""Detection quickstart: a small Mask R-CNN with EvoNorm-B0, offline on a CPU.

  python -m evonorm_detection.quickstart            # a few minutes
  python -m evonorm_detection.quickstart --layers=evonorm_s0
  python -m evonorm_detection.quickstart --layers=bn_relu,evonorm_b0

Writes the generated shapes dataset (``evonorm_detection.data.shapes``:
shapes with exact boxes and masks on crops of scikit-learn's sample photos),
trains the ``evonorm_maskrcnn_shapes_quickstart`` experiment (a narrow
ResNet-18-FPN Mask R-CNN with the chosen layer at every norm site) with Model
Garden's trainer, evaluates COCO box and mask AP with Model Garden's COCO
evaluator, exports a SavedModel with the detection serving module, reloads
it, runs it on the 64 validation images and prints how many objects it found
and how often of the right class (one box per object:
:mod:`evonorm_detection.predictions`), and draws the ground truth above its
boxes and masks (``WORKDIR/predictions.png``; with several ``--layers``,
one table row and ``WORKDIR/predictions_<layer>.png`` per layer). A check
of the pipeline, not a COCO result: the data are toy shapes and the training is minutes long.
"""

from __future__ import annotations

from absl import flags
import numpy as np

from evonorm_detection import predictions
from evonorm_detection import quickstart_lib
from evonorm_model_garden import cli

_LAYERS = flags.DEFINE_list("layers", ["evonorm_b0"], "Registered layers, "
                            "each trained in turn at every norm site.")
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


def main(argv):
  del argv
  several = len(_LAYERS.value) > 1
  results = [quickstart_lib.run(
      layer, _WORKDIR.value, _EPOCHS.value, _OVERRIDE.value, _VERBOSE.value,
      _STEPS.value,
      f"predictions_{layer}.png" if several else "predictions.png")
             for layer in _LAYERS.value]
  print("\n| layer | box AP | mask AP | objects found | of those, right "
        "class | false detections |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in results:
    print(f"| {r['layer']} | {r['box_ap']:.3f} | {r['mask_ap']:.3f} | "
          f"{r['found']}/{r['objects']} | {r['correct_class']}/{r['found']} "
          f"| {r['false_detections']} |")
  for r in results:
    print(f"\nClasses of the {r['objects']} validation objects against the "
          f"detections of {r['layer']} matched to them (reloaded SavedModel; "
          f"score >= {predictions.MIN_SCORE}, one box per object, box IoU >= "
          f"{predictions.MATCH_IOU}):\n")
    print("\n".join(predictions.confusion_table(np.asarray(r["confusion"]))))
    print(f"\nSavedModel: {r['saved_model']}\nPredictions: {r['picture']}")
  print("(Toy shapes and minutes of training: a check of the pipeline, not "
        "a COCO result.)")


if __name__ == "__main__":
  cli.run(main)
