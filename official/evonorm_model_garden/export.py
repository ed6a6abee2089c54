"""Model Garden's SavedModel export for every task of the project, and its
conversion to TFLite.

Classifiers serve ``{logits, probs}``, Mask R-CNN detections (boxes, scores,
classes, masks, num_detections), from ``image_tensor`` (uint8 [batch, H, W,
3]), ``image_bytes`` (encoded images) or ``tf_example`` (serialized examples)
inputs, with Model Garden's preprocessing.

:func:`write_tflite` converts an ``image_tensor`` SavedModel's serving
signature, preprocessing included, to a TFLite model: float32, with
dynamic-range quantized weights, or int8 (weights and activations, calibrated
on representative images; an op without an int8 kernel stays float32 between
quantize and dequantize ops). Every registered layer converts to standard
TFLite ops that the XNNPack delegate runs (``tests/test_tflite.py``).
"""

from __future__ import annotations

import contextlib
import glob
import os
from typing import Iterator

import numpy as np
import tensorflow as tf
from official.core import task_factory
from official.vision.serving import export_saved_model_lib
# pylint: disable=g-direct-tensorflow-import
from tf_keras.src.saving.legacy.saved_model import utils as keras_saving
# pylint: enable=g-direct-tensorflow-import


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
  with staged(export_dir) as staging, signatures_only():
    export_saved_model_lib.export_inference_graph(
        input_type=input_type, batch_size=batch_size, input_image_size=size,
        params=params, checkpoint_path=checkpoint_path,
        export_dir=staging, export_module=module)
  return export_dir


@contextlib.contextmanager
def staged(export_dir: str) -> Iterator[str]:
  """Yields a folder beside ``export_dir`` to write a SavedModel into, and
  moves it to ``export_dir`` once complete, replacing an earlier export.
  A job killed while writing leaves ``export_dir`` as it was (absent, or
  the earlier complete export) and never a half-written model there; the
  next export removes what the killed one left."""
  export_dir = export_dir.rstrip("/")
  staging, earlier = f"{export_dir}.partial", f"{export_dir}.earlier"
  for leftover in (staging, earlier):
    if tf.io.gfile.exists(leftover):
      tf.io.gfile.rmtree(leftover)
  yield staging
  if tf.io.gfile.exists(export_dir):
    tf.io.gfile.rename(export_dir, earlier)
  tf.io.gfile.rename(staging, export_dir)
  if tf.io.gfile.exists(earlier):
    tf.io.gfile.rmtree(earlier)


TFLITE_QUANTIZATIONS = ("none", "dynamic_range", "int8")


def check_tflite_request(input_type: str, tflite_path: str | None,
                         quantize: str, representative_data: str | None):
  """Raises, before any work, unless the TFLite conversion asked for can
  be done: an ``image_tensor`` input, representative images exactly when
  quantizing to int8 (the path itself: ``cli.check_output_file``)."""
  if not tflite_path:
    if quantize != "none" or representative_data:
      raise ValueError("--tflite_quantize and --representative_data apply "
                       "to a TFLite model: pass --tflite=PATH too.")
    return
  if input_type != "image_tensor":
    raise ValueError(f"--tflite needs --input_type=image_tensor (got "
                     f"{input_type!r}): TFLite has no image decoding or "
                     "tf.Example parsing ops.")
  if (quantize == "int8") != bool(representative_data):
    raise ValueError(
        "--tflite_quantize=int8 calibrates its activations on "
        "--representative_data (a .npy file of uint8 images [N, H, W, 3], "
        "or a glob of image files), and only int8 uses it.")
  if representative_data:
    representative_images(representative_data, (8, 8), count=1)


def representative_images(source: str, size, count: int = 100
                          ) -> np.ndarray:
  """Up to ``count`` uint8 images [N, height, width, 3] from ``source``: a
  ``.npy`` file of images ([N, H, W] or [N, H, W, C], C in 1 or 3), or a
  glob of image files (JPEG, PNG, BMP, GIF); resized to ``size``."""
  if source.endswith(".npy"):
    if not tf.io.gfile.exists(source):
      raise FileNotFoundError(f"--representative_data={source!r} does not "
                              "exist.")
    with tf.io.gfile.GFile(source, "rb") as f:
      images = np.load(f)[:count]
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
      raise ValueError(f"--representative_data={source!r} holds an array "
                       f"of shape {images.shape}; expected images [N, H, W] "
                       "or [N, H, W, 1 or 3].")
  else:
    paths = sorted(glob.glob(source))[:count]
    if not paths:
      raise FileNotFoundError(f"--representative_data={source!r} matches no "
                              "file: pass a .npy file of images or a glob "
                              "of image files.")
    images = [tf.io.decode_image(tf.io.read_file(p), channels=3,
                                 expand_animations=False).numpy()
              for p in paths]
  resized = [tf.image.resize(np.broadcast_to(
      image, image.shape[:2] + (3,)), size).numpy() for image in images]
  return np.clip(np.round(np.stack(resized)), 0, 255).astype(np.uint8)


def write_tflite(export_dir: str, tflite_path: str, quantize: str = "none",
                 images: np.ndarray | None = None,
                 batch_size: int | None = None,
                 image_size=None) -> str:
  """Converts the ``serving_default`` signature of an ``image_tensor``
  SavedModel to a TFLite model at ``tflite_path``; returns the path.

  Model Garden's signature takes images of any height and width: the
  TFLite model takes ``image_size`` (height, width), in batches of
  ``batch_size``, else of the signature's fixed batch size, else of 1
  (the preprocessing maps over the batch in a while loop, inside which
  XNNPack cannot resize to another batch). ``quantize`` and ``images``:
  see :func:`to_tflite`.
  """
  loaded = tf.saved_model.load(export_dir)  # holds the variables
  served = loaded.signatures["serving_default"]
  (input_name, spec), = served.structured_input_signature[1].items()
  height, width = image_size or spec.shape[1:3]
  if height is None or width is None:
    raise ValueError(f"{export_dir} serves images of any size: give the "
                     "TFLite model's image_size.")
  shape = [batch_size or spec.shape[0] or 1, int(height), int(width),
           spec.shape[3]]
  concrete = tf.function(lambda x: served(**{input_name: x})
                         ).get_concrete_function(
                             tf.TensorSpec(shape, spec.dtype,
                                           name=input_name))
  model = to_tflite(concrete, loaded, quantize, images)
  tf.io.gfile.makedirs(os.path.dirname(os.path.abspath(tflite_path)))
  with tf.io.gfile.GFile(tflite_path + ".tmp", "wb") as f:
    f.write(model)
  tf.io.gfile.rename(tflite_path + ".tmp", tflite_path, overwrite=True)
  return tflite_path


def keras_to_tflite(model, input_shape, quantize: str = "none",
                    images: np.ndarray | None = None) -> bytes:
  """A Keras model's inference (``training=False``) on float32 inputs of
  ``input_shape`` (``None`` for an unknown batch) as a TFLite model."""
  concrete = tf.function(lambda x: model(x, training=False)
                         ).get_concrete_function(
                             tf.TensorSpec(input_shape, tf.float32))
  return to_tflite(concrete, model, quantize, images)


# TFLite's int8 division rejects any divisor whose stored byte is 0
# (tensorflow/lite/kernels/div.cc checks the quantized value, not the value
# it stands for), and an EvoNorm-B divisor max(s, v1*x + b) is an
# activation that takes every byte: the division stays float32.
FLOAT_IN_INT8 = ("DIV",)


def to_tflite(concrete, trackable, quantize: str = "none",
              images: np.ndarray | None = None) -> bytes:
  """``concrete`` (a concrete function of ``trackable``'s variables) as a
  TFLite model: float32 (``quantize="none"``), int8 weights
  (``dynamic_range``), or int8 weights and activations (``int8``),
  calibrated on ``images`` ([N, ...] inputs of the function, one at a time),
  with the ops of :data:`FLOAT_IN_INT8` and those without an int8 kernel
  left float32; inputs and outputs keep their types."""
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete],
                                                             trackable)
  if quantize not in TFLITE_QUANTIZATIONS:
    raise ValueError(f"quantize={quantize!r}: choose among "
                     f"{', '.join(TFLITE_QUANTIZATIONS)}.")
  if quantize != "none":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  # The converter saves `trackable` first: without Keras's traces of every
  # layer, 5 times faster on MobileNetV2.
  with signatures_only():
    if quantize != "int8":
      return converter.convert()
    if images is None or not len(images):
      raise ValueError("int8 quantization needs representative images.")

    def representative() -> Iterator[list[np.ndarray]]:
      for image in images:
        yield [image[None]]

    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    # The debugger's selective quantization is TFLite's way to keep ops
    # float32 in an int8 model.
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=list(FLOAT_IN_INT8)))
    return debugger.get_nondebug_quantized_model()
