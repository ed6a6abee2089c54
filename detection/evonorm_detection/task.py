"""Model Garden's Mask R-CNN task, building the registry-norm model.

Only what must change is changed: ``build_model`` builds
:func:`evonorm_detection.maskrcnn.build_maskrcnn` (and checks that ``groups``
fits every grouped norm site of the whole model), ``check_data`` (run by the
entry points before any work) checks that the TFRecords and the annotation
file exist and fit the config and each other. Losses, COCO
evaluation (pycocotools, through Model Garden's ``COCOEvaluator``), checkpoint
initialization and the train/validation steps are Model Garden's. Weight
decay is Model Garden's: an L2 regularizer on convolution and dense kernels
only, never on normalization variables.
"""

from __future__ import annotations

import json

import tensorflow as tf
import tf_keras
from official.core import task_factory
from official.vision.tasks import maskrcnn as mg_task

from evonorm_detection import configs
from evonorm_detection import maskrcnn
from evonorm_detection import serving
from evonorm_model_garden import experiments
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


_BOX_KEYS = tuple(f"image/object/bbox/{k}" for k in ("xmin", "ymin", "xmax",
                                                    "ymax"))


def check_records(task_config, data_config, split: str):
  """Raises, naming the file and record, unless the first records of the
  split's first TFRecord file are Model Garden detection examples (an
  encoded image, its source id, boxes, class labels in ``[0,
  num_classes)``, and instance masks when the model predicts them), and,
  for validation with ``task.annotation_file``, unless that COCO file
  describes those images (else the COCO evaluator fails at the end of
  training, or scores boxes against other images)."""
  where, examples = experiments.sample_examples(data_config, split)
  classes = task_config.model.num_classes
  required = ["image/encoded", "image/source_id", *_BOX_KEYS,
              "image/object/class/label"]
  if task_config.model.include_mask:
    required.append("image/object/mask")
  source_ids = []
  for index, features in enumerate(examples):
    missing = [k for k in required if k not in (features or {})]
    if missing:
      fix = ("write COCO-style TFRecords with official/vision/data/"
             "create_coco_tf_record.py")
      if missing == ["image/object/mask"]:
        fix += (" --include_masks, or set task.model.include_mask=false to "
                "train boxes only")
      raise ValueError(
          f"{where}, record {index}, is not a Model Garden detection example "
          f"(no {', '.join(missing[:3])}): {fix}.")
    labels = list(features["image/object/class/label"].int64_list.value)
    outside = [l for l in labels if not 0 <= l < classes]
    if outside:
      raise ValueError(
          f"{where}, record {index}, has class label {outside[0]} outside "
          f"[0, {classes}) (task.model.num_classes={classes}, the background "
          "class 0 included): set task.model.num_classes to the largest "
          "category id + 1.")
    source_ids.append(
        features["image/source_id"].bytes_list.value[0].decode())
  if not data_config.is_training and task_config.annotation_file:
    _check_annotations(task_config.annotation_file, where, source_ids)


def _check_annotations(annotation_file: str, records: str, source_ids):
  where = f"task.annotation_file={annotation_file!r}"
  try:
    with tf.io.gfile.GFile(annotation_file) as f:
      coco = json.load(f)
    image_ids = {str(image["id"]) for image in coco["images"]}
    coco["annotations"]  # pylint: disable=pointless-statement
  except (ValueError, KeyError, TypeError) as error:
    raise ValueError(
        f"{where} is not a COCO annotation file (a JSON object with "
        f"'images' and 'annotations'; {error.__class__.__name__}: "
        f"{str(error)[:80]}): pass instances_val2017.json or leave it empty "
        "to build the annotations from the validation TFRecords.") from None
  unknown = [i for i in source_ids if i not in image_ids]
  if unknown:
    raise ValueError(
        f"{where} does not describe the validation records: image/source_id "
        f"{unknown[0]!r} ({records}) is not among its {len(image_ids)} "
        f"images ({len(unknown)} of the first {len(source_ids)} records "
        "are not). "
        "Pass the annotation file written with these records, or leave "
        "task.annotation_file empty to build it from them.")


@task_factory.register_task_cls(configs.MaskRCNNTask)
class MaskRCNNTask(mg_task.MaskRCNNTask):
  """Model Garden's Mask R-CNN task with registry norms everywhere."""

  export_module = serving.DetectionModule

  @staticmethod
  def check_data(task_config, data_config, split: str):
    check_data_available(task_config, data_config, split)
    check_records(task_config, data_config, split)

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
