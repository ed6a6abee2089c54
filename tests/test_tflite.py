"""Every registered layer converts to TFLite and serves what Keras serves.

A small network (convolution, the layer, pooling, a dense layer) with
random weights, moving statistics included, is converted to a float32
TFLite model and run in the TFLite interpreter at batch 1 and, from the
same model with an unknown batch size, at batch 3; its outputs equal Keras
inference, and the whole graph runs in one XNNPack partition (a shape
computed at run time, a dynamic ``BroadcastTo`` or an op XNNPack lacks would
split it, as public reports of grouped norms in TFLite describe).

Quantized: the same network trained for a few seconds on scikit-learn's
8x8 digits, with int8 weights (dynamic range) and with int8 weights and
activations (calibrated on training digits), predicts the class Keras
predicts on held-out digits. And Model Garden's mobile classifiers,
MobileNetV2 and EfficientNet-B0, convert with EvoNorm-B0 and S0 and equal
Keras in float32.
"""

import collections
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
import tensorflow as tf
import tf_keras
from official.core import task_factory

import evonorm_layers
from evonorm_model_garden import experiments
from evonorm_model_garden import export

LAYERS = evonorm_layers.registry.available_norm_activations()
# EvoNorm-B2's signed square root needs Sign, which XNNPack does not run:
# its graph runs in two partitions (still converted, still exact).
PARTITIONS = {"evonorm_b2": 2}


def _network(name: str, classes: int = 5, norms: int = 1,
             randomize: bool = True) -> tf_keras.Model:
  """Convolution and the layer ``norms`` times (the second at stride 2),
  then pooling and a dense layer; the norms' weights random unless not
  ``randomize``."""
  rng = np.random.default_rng(0)
  kwargs = ({"groups": 4} if "groups" in
            evonorm_layers.registry.accepted_arguments(name) else {})
  inputs = tf_keras.Input((8, 8, 3))
  x = inputs
  weights = []
  for i in range(norms):
    x = tf_keras.layers.Conv2D(16, 3, strides=1 + i, padding="same")(x)
    norm = evonorm_layers.get_norm_activation(name, **kwargs)
    x = norm(x)
    weights += norm.weights
  outputs = tf_keras.layers.Dense(classes)(
      tf_keras.layers.GlobalAveragePooling2D()(x))
  model = tf_keras.Model(inputs, outputs)
  for weight in weights if randomize else ():  # as after training
    values = rng.uniform(0.5, 1.5, weight.shape)
    if "mean" in weight.name or "beta" in weight.name:
      values = rng.normal(0.0, 0.3, weight.shape)
    weight.assign(values.astype(np.float32))
  return model


def _interpreter(model_content: bytes, batch: int,
                 size: int = 8) -> tf.lite.Interpreter:
  with warnings.catch_warnings():  # its move to ai_edge_litert
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(model_content=model_content)
  interpreter.resize_tensor_input(0, [batch, size, size, 3])
  interpreter.allocate_tensors()
  return interpreter


@pytest.mark.parametrize("name", LAYERS)
def test_float32_tflite_equals_keras(name):
  model = _network(name)
  images = np.random.default_rng(1).normal(size=(3, 8, 8, 3)).astype(
      np.float32)
  converted = export.keras_to_tflite(model, [None, 8, 8, 3])
  for batch in (1, 3):
    interpreter = _interpreter(converted, batch)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                           images[:batch])
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    want = model(images[:batch], training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
    ops = collections.Counter(
        op["op_name"] for op in interpreter._get_ops_details())  # pylint: disable=protected-access
    assert ops["DELEGATE"] == PARTITIONS.get(name, 1), dict(ops)


def _predict(model_content: bytes, images: np.ndarray) -> np.ndarray:
  interpreter = _interpreter(model_content, len(images))
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
  interpreter.invoke()
  return interpreter.get_tensor(
      interpreter.get_output_details()[0]["index"])


@pytest.fixture(scope="module")
def digits():
  data = load_digits()
  images = np.repeat(data.images[..., None] / 16.0, 3, -1).astype(np.float32)
  return (images[:1400], data.target[:1400]), (images[1400:],
                                                data.target[1400:])


# Agreement of int8 TFLite with Keras on the 397 held-out digits.
INT8_AGREEMENT = 0.9


@pytest.mark.parametrize("name", LAYERS)
def test_quantized_tflite_predicts_the_keras_class(name, digits):
  """Trained briefly on digits (two norms, a stride-2 one among them), the
  network's dynamic-range and int8 TFLite models predict Keras's class."""
  (train_x, train_y), (test_x, _) = digits
  tf_keras.utils.set_random_seed(0)
  model = _network(name, classes=10, norms=2, randomize=False)
  model.compile(tf_keras.optimizers.Adam(0.01),
                tf_keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
  model.fit(train_x, train_y, batch_size=50, epochs=3, verbose=0)
  want = model.predict(test_x, verbose=0).argmax(-1)
  assert np.mean(want == digits[1][1]) > 0.5  # it learned something
  for quantize in ("dynamic_range", "int8"):
    got = _predict(export.keras_to_tflite(model, [None, 8, 8, 3],
                                          quantize, train_x[:100]),
                   test_x).argmax(-1)
    assert np.mean(got == want) >= INT8_AGREEMENT, (quantize,
                                                     np.mean(got == want))


@pytest.mark.parametrize("layer", ["evonorm_b0", "evonorm_s0"])
@pytest.mark.parametrize("experiment", ["evonorm_mobilenetv2_imagenet",
                                        "evonorm_efficientnet_b0_imagenet"])
def test_mobile_classifiers_convert_and_equal_keras(experiment, layer):
  params = experiments.load_params(experiment, (), ",".join([
      f"task.model.norm_activation.type={layer}",
      "task.model.norm_activation.use_sync_bn=false",
      "task.model.input_size=[32,32,3]", "task.model.num_classes=10"]))
  tf_keras.utils.set_random_seed(0)
  model = task_factory.get_task(params.task).build_model()
  rng = np.random.default_rng(0)
  for weight in model.weights:  # moving statistics as after training
    if "moving_variance" in weight.name:
      weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(np.float32))
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  interpreter = _interpreter(
      export.keras_to_tflite(model, [None, 32, 32, 3]), 2, size=32)
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
  interpreter.invoke()
  got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  want = model(images, training=False).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4,
                             atol=1e-4 * np.abs(want).max())
  ops = collections.Counter(
      op["op_name"] for op in interpreter._get_ops_details())  # pylint: disable=protected-access
  assert ops["DELEGATE"] == 1, dict(ops)
