"""Model Garden's image-classification task, with input checks up front.

The model is Model Garden's classification model; its backbone comes from
Model Garden's backbone factory, where this project registers backbones that
read ``norm_activation.type``. Normalization variables are not weight-decayed:
the task's L2 regularizer is attached to convolution and dense kernels only
(never to norm layers), as in the authors' code.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_datasets as tfds
from official.core import task_factory
from official.vision.tasks import image_classification as mg_task

from evonorm_model_garden import experiments
from evonorm_vision.configs import image_classification as exp_cfg


def check_data_available(data_config, split: str):
  """Raises a clear error if the configured dataset is not there.

  Nothing is downloaded: TFDS datasets must already be prepared in
  ``tfds_data_dir`` and TFRecords must exist at ``input_path``.
  """
  if data_config.tfds_name:
    name = data_config.tfds_name
    data_dir = data_config.tfds_data_dir or None
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(
          f"TFDS dataset {name!r} (task.{split}.tfds_name) is not prepared "
          f"in {builder.data_dir!r}. Prepare it once where it can be "
          f"downloaded (`tfds build {name} --data_dir=DIR`; ImageNet needs "
          "its archives placed in DIR/downloads/manual first) and pass "
          f"task.{split}.tfds_data_dir=DIR. Nothing is downloaded at run "
          "time.")
    return
  patterns = data_config.input_path
  patterns = [patterns] if isinstance(patterns, str) else list(patterns)
  if not patterns or not any(patterns):
    raise ValueError(f"task.{split} names no data: set input_path "
                     "(TFRecords) or tfds_name.")
  for pattern in patterns:
    if not tf.io.gfile.glob(pattern):
      raise FileNotFoundError(
          f"No files match task.{split}.input_path={pattern!r}. TFRecords "
          "must hold Model Garden classification examples "
          "('image/encoded', 'image/class/label'). For the offline "
          "datasets, write them with `python -m evonorm_vision.data.offline "
          "--dataset=mnist5k --output_dir=DIR` and pass "
          f"task.{split}.input_path=DIR/{'train' if 'train' in split else 'validation'}-*.tfrecord.")


def check_records(task_config, data_config, split: str):
  """Raises, naming the file and record, unless the first records of the
  first TFRecord file are Model Garden classification examples: an encoded
  image under ``image_field_key`` and an integer label under
  ``label_field_key`` in ``[0, num_classes)``."""
  if data_config.tfds_name or data_config.file_type != "tfrecord":
    return
  classes = task_config.model.num_classes
  image_key = data_config.image_field_key
  label_key = data_config.label_field_key
  where, examples = experiments.sample_examples(data_config, split)
  for index, features in enumerate(examples):
    if features is None or image_key not in features or (
        label_key not in features):
      raise ValueError(
          f"{where}, record {index}, is not a Model Garden classification "
          f"example (a tf.train.Example with {image_key!r} and {label_key!r})"
          "; write TFRecords with official/vision/data tools, or set "
          f"task.{split}.image_field_key / label_field_key.")
    labels = list(features[label_key].int64_list.value)
    if data_config.is_multilabel:
      continue
    if len(labels) != 1 or not 0 <= labels[0] < classes:
      raise ValueError(
          f"{where}, record {index}, has label {labels} outside [0, "
          f"{classes}) (task.model.num_classes={classes}): set "
          "task.model.num_classes to the number of classes of the data, or "
          "fix its labels.")


@task_factory.register_task_cls(exp_cfg.ImageClassificationTask)
class ImageClassificationTask(mg_task.ImageClassificationTask):
  """Model Garden's classification task; fails early on bad input config."""

  @staticmethod
  def check_data(task_config, data_config, split: str):
    check_data_available(data_config, split)
    check_records(task_config, data_config, split)

  def build_inputs(self, params, input_context=None):
    split = "train_data" if params.is_training else "validation_data"
    check_data_available(params, split)
    if input_context is not None:
      experiments.check_batch_divisible(
          params.global_batch_size, input_context.num_replicas_in_sync,
          f"task.{split}.global_batch_size")
    return super().build_inputs(params, input_context)
