"""Model Garden's SavedModel export for every task of the project.

Classifiers serve ``{logits, probs}``, Mask R-CNN detections (boxes, scores,
classes, masks, num_detections), from ``image_tensor`` (uint8 [batch, H, W,
3]), ``image_bytes`` (encoded images) or ``tf_example`` (serialized examples)
inputs, with Model Garden's preprocessing.
"""

from __future__ import annotations

import tensorflow as tf
from official.core import task_factory
from official.vision.serving import export_saved_model_lib
# pylint: disable=g-direct-tensorflow-import
from tf_keras.src.saving.legacy.saved_model import utils as keras_saving
# pylint: enable=g-direct-tensorflow-import


def check_checkpoint(checkpoint_path: str):
  """Raises unless ``checkpoint_path`` is a checkpoint prefix or a folder."""
  if not (tf.io.gfile.exists(checkpoint_path) or
          tf.io.gfile.exists(checkpoint_path + ".index")):
    raise FileNotFoundError(
        f"--checkpoint_path={checkpoint_path!r} does not exist: pass a "
        "checkpoint file prefix or the training run's --model_dir.")


def signatures_only():
  """A scope in which ``tf.saved_model.save`` writes a model's variables and
  signatures, not Keras's traces of every layer's call: those serve to
  reload the layers as Keras objects, which a served model is not, and took
  a quarter of an export's time and size."""
  return keras_saving.keras_option_scope(save_traces=False,
                                         in_tf_saved_model_scope=True)


def export(params, checkpoint_path, export_dir, input_type="image_tensor",
           input_image_size=None, batch_size=None):
  """Writes the SavedModel (and params.yaml) to ``export_dir``; returns it.

  The serving module is the task class's ``export_module`` where it has one
  (Mask R-CNN with registry norms), else Model Garden's for the task.
  """
  size = [int(s) for s in (input_image_size or
                           params.task.model.input_size[:2])]
  module_cls = getattr(task_factory.get_task_cls(type(params.task)),
                       "export_module", None)
  module = None
  if module_cls is not None:
    module = module_cls(params=params, batch_size=batch_size,
                        input_image_size=size, input_type=input_type)
  with signatures_only():
    export_saved_model_lib.export_inference_graph(
        input_type=input_type, batch_size=batch_size, input_image_size=size,
        params=params, checkpoint_path=checkpoint_path,
        export_dir=export_dir, export_module=module)
  return export_dir
