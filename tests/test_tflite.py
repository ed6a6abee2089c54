"""Every registered layer converts to TFLite and serves what Keras serves.

A small network (convolution, the layer, pooling, a dense layer) with
random weights, moving statistics included, is converted to a float32
TFLite model and run in the TFLite interpreter at batch 1 and, from the
same model with an unknown batch size, at batch 3; its outputs equal Keras
inference, and the whole graph runs in one XNNPack partition (a shape
computed at run time, a dynamic ``BroadcastTo`` or an op XNNPack lacks would
split it, as public reports of grouped norms in TFLite describe).
"""

import collections
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import evonorm_layers

LAYERS = evonorm_layers.registry.available_norm_activations()
# EvoNorm-B2's signed square root needs Sign, which XNNPack does not run:
# its graph runs in two partitions (still converted, still exact).
PARTITIONS = {"evonorm_b2": 2}


def _network(name: str) -> tf_keras.Model:
  rng = np.random.default_rng(0)
  kwargs = ({"groups": 4} if "groups" in
            evonorm_layers.registry.accepted_arguments(name) else {})
  inputs = tf_keras.Input((8, 8, 3))
  x = tf_keras.layers.Conv2D(16, 3, padding="same")(inputs)
  norm = evonorm_layers.get_norm_activation(name, **kwargs)
  x = norm(x)
  outputs = tf_keras.layers.Dense(5)(
      tf_keras.layers.GlobalAveragePooling2D()(x))
  model = tf_keras.Model(inputs, outputs)
  for weight in norm.weights:  # as after training, not as initialized
    values = rng.uniform(0.5, 1.5, weight.shape)
    if "mean" in weight.name or "beta" in weight.name:
      values = rng.normal(0.0, 0.3, weight.shape)
    weight.assign(values.astype(np.float32))
  return model


def _interpreter(model_content: bytes, batch: int) -> tf.lite.Interpreter:
  with warnings.catch_warnings():  # its move to ai_edge_litert
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(model_content=model_content)
  interpreter.resize_tensor_input(0, [batch, 8, 8, 3])
  interpreter.allocate_tensors()
  return interpreter


@pytest.mark.parametrize("name", LAYERS)
def test_float32_tflite_equals_keras(name):
  model = _network(name)
  images = np.random.default_rng(1).normal(size=(3, 8, 8, 3)).astype(
      np.float32)
  converted = tf.lite.TFLiteConverter.from_keras_model(model).convert()
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
