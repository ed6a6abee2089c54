"""Model Garden's Mask R-CNN task, building the registry-norm model.

Only what must change is changed: ``build_model`` builds
:func:`evonorm_detection.maskrcnn.build_maskrcnn` (and checks that ``groups``
fits every grouped norm site of the whole model), ``build_inputs`` first
checks that the TFRecords and the annotation file exist. Losses, COCO
evaluation (pycocotools, through Model Garden's ``COCOEvaluator``), checkpoint
initialization and the train/validation steps are Model Garden's. Weight
decay is Model Garden's: an L2 regularizer on convolution and dense kernels
only, never on normalization variables.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras
from official.core import task_factory
from official.vision.tasks import maskrcnn as mg_task

from evonorm_detection import configs
from evonorm_detection import maskrcnn
from evonorm_detection import serving
from evonorm_model_garden import norm_activation as norm_lib

PREPARE_COCO = (
    "Write COCO as Model Garden TFRecords once with "
    "official/vision/data/create_coco_tf_record.py (--include_masks) and "
    "point task.train_data.input_path / task.validation_data.input_path at "
    "them and task.annotation_file at instances_val2017.json; for the "
    "shapes quickstart run `python -m evonorm_detection.data.shapes "
    "--output_dir=DIR`.")


def check_data_available(task_config, data_config, split: str):
  """Raises a clear error for missing TFRecords or annotation file."""
  if data_config.tfds_name:
    raise ValueError(
        f"task.{split}.tfds_name={data_config.tfds_name!r}: Model Garden's "
        "Mask R-CNN reads TFRecords only (TFDS coco/2017 has no instance "
        f"masks). {PREPARE_COCO}")
  patterns = data_config.input_path
  patterns = [patterns] if isinstance(patterns, str) else list(patterns)
  if not any(patterns):
    raise ValueError(f"task.{split}.input_path is empty. {PREPARE_COCO}")
  for pattern in patterns:
    if not tf.io.gfile.glob(pattern):
      raise FileNotFoundError(
          f"No files match task.{split}.input_path={pattern!r}. "
          f"{PREPARE_COCO}")
  annotation = task_config.annotation_file
  if (not data_config.is_training and annotation and
      not tf.io.gfile.exists(annotation)):
    raise FileNotFoundError(
        f"task.annotation_file={annotation!r} does not exist (the COCO "
        "evaluator reads the validation annotations from it; leave it empty "
        f"to build it from the validation TFRecords). {PREPARE_COCO}")


@task_factory.register_task_cls(configs.MaskRCNNTask)
class MaskRCNNTask(mg_task.MaskRCNNTask):
  """Model Garden's Mask R-CNN task with registry norms everywhere."""

  check_data = staticmethod(check_data_available)
  export_module = serving.DetectionModule

  def build_model(self):
    model_config = self.task_config.model
    weight_decay = self.task_config.losses.l2_weight_decay
    # Halved to match tf.nn.l2_loss, as Model Garden does.
    l2 = tf_keras.regularizers.l2(weight_decay / 2.0) if weight_decay else None
    model = maskrcnn.build_maskrcnn(
        tf_keras.layers.InputSpec(shape=[None] + model_config.input_size),
        model_config, l2_regularizer=l2)
    if self.task_config.freeze_backbone:
      model.backbone.trainable = False
    # Builds every component (Model Garden's warm-up call).
    model(tf_keras.Input(model_config.input_size),
          image_shape=tf_keras.layers.Input([2]), training=False)
    norm_lib.check_groups_fit(model, model_config.norm_activation,
                              "Mask R-CNN")
    return model

  def build_inputs(self, params, input_context=None, dataset_fn=None):
    split = "train_data" if params.is_training else "validation_data"
    check_data_available(self.task_config, params, split)
    return super().build_inputs(params, input_context, dataset_fn)
