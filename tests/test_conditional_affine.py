"""The affine seam: call-time (conditional) gamma/beta, center/scale and
gamma_initializer, for every registered layer, against the NumPy reference
with per-sample parameters."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import evonorm_layers
from tests import layer_helpers
from tests.numpy_reference import reference_forward

# (shape, channel axis)
LAYOUTS = {
    "rank4_channels_last": ((5, 4, 3, 16), -1),
    "rank4_channels_first": ((5, 16, 4, 3), 1),
    "rank2": ((6, 16), -1),
    "rank3": ((4, 7, 16), -1),
}


def _per_sample(values, rank):
  """``[N, C]`` values shaped to broadcast against a channels-last input."""
  return values.reshape((values.shape[0],) + (1,) * (rank - 2) +
                        (values.shape[1],))


def _reference(name, layer, x, params, moving, axis, training, kwargs):
  return reference_forward(
      name, x, params, moving, axis=axis, training=training,
      eps=kwargs["epsilon"], momentum=kwargs.get("momentum"),
      groups=kwargs.get("groups"), nonlinearity=layer.nonlinearity)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_per_sample_gamma_beta_match_numpy(name, layout):
  shape, axis = LAYOUTS[layout]
  rng = np.random.default_rng(0)
  kwargs = layer_helpers.layer_kwargs(name, axis=axis, center=False,
                                      scale=False)
  layer = evonorm_layers.get_norm_activation(name, **kwargs)
  layer.build(shape)
  assert layer.gamma is None and layer.beta is None
  names = {v.name.split("/")[-1].split(":")[0] for v in layer.weights}
  assert not names & {"gamma", "beta"}, names
  params, moving = layer_helpers.randomize_variables(layer, rng)
  n, c = shape[0], shape[axis]
  for training in (True, False):
    x = layer_helpers.random_input(rng, shape)
    gamma = 1.0 + rng.normal(0.0, 0.5, (n, c)).astype(np.float32)
    beta = rng.normal(0.0, 0.5, (n, c)).astype(np.float32)
    rank = len(shape)
    expected, moving = _reference(
        name, layer, x, {**params, "gamma": _per_sample(gamma, rank),
                         "beta": _per_sample(beta, rank)},
        moving, axis, training, kwargs)
    got = layer(x, training=training, gamma=gamma, beta=beta)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5,
                               err_msg=f"training={training}")


@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_per_channel_call_time_parameters_replace_the_variables(name):
  shape, axis = LAYOUTS["rank4_channels_last"]
  rng = np.random.default_rng(1)
  kwargs = layer_helpers.layer_kwargs(name)
  layer = evonorm_layers.get_norm_activation(name, **kwargs)
  layer.build(shape)
  params, moving = layer_helpers.randomize_variables(layer, rng)
  x = layer_helpers.random_input(rng, shape)
  gamma = rng.uniform(0.5, 1.5, (16,)).astype(np.float32)
  expected, _ = _reference(name, layer, x, {**params, "gamma": gamma},
                           moving, axis, True, kwargs)
  # Only gamma is given: beta stays the layer's own variable.
  np.testing.assert_allclose(layer(x, training=True, gamma=gamma), expected,
                             rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_gradients_of_conditional_parameters_match_autodiff(name):
  shape, axis = LAYOUTS["rank4_channels_last"]
  rng = np.random.default_rng(2)
  kwargs = layer_helpers.layer_kwargs(name, center=False, scale=False)
  layer = evonorm_layers.get_norm_activation(name, **kwargs)
  layer.build(shape)
  params, moving = layer_helpers.randomize_variables(layer, rng)
  x = tf.constant(layer_helpers.random_input(rng, shape))
  gamma = tf.constant(1.0 + rng.normal(0, 0.5, (5, 16)).astype(np.float32))
  beta = tf.constant(rng.normal(0, 0.5, (5, 16)).astype(np.float32))
  upstream = tf.constant(rng.normal(size=shape).astype(np.float32))
  with tf.GradientTape() as tape:
    tape.watch([x, gamma, beta])
    y = layer(x, training=True, gamma=gamma, beta=beta)
  got = tape.gradient(y, [x, gamma, beta], output_gradients=upstream)

  x64, g64, b64 = (tf.cast(t, tf.float64) for t in (x, gamma, beta))
  p64 = {k: tf.constant(v, tf.float64) for k, v in params.items()}
  with tf.GradientTape() as tape:
    tape.watch([x64, g64, b64])
    ref, _ = reference_forward(
        name, x64, {**p64, "gamma": tf.reshape(g64, (5, 1, 1, 16)),
                    "beta": tf.reshape(b64, (5, 1, 1, 16))},
        moving, axis=axis, xp=tf.experimental.numpy, training=True,
        eps=kwargs["epsilon"], momentum=kwargs.get("momentum"),
        groups=kwargs.get("groups"), nonlinearity=True)
  want = tape.gradient(ref, [x64, g64, b64],
                       output_gradients=tf.cast(upstream, tf.float64))
  for label, g, w in zip(["x", "gamma", "beta"], got, want):
    np.testing.assert_allclose(g, w, rtol=2e-3, atol=2e-3 * np.abs(w).max(),
                               err_msg=label)


@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_zero_gamma_initializer(name):
  shape, axis = LAYOUTS["rank4_channels_last"]
  rng = np.random.default_rng(3)
  kwargs = layer_helpers.layer_kwargs(name, gamma_initializer="zeros")
  layer = evonorm_layers.get_norm_activation(name, **kwargs)
  layer.build(shape)
  np.testing.assert_array_equal(layer.gamma.numpy(), np.zeros(16))
  x = layer_helpers.random_input(rng, shape)
  params = {v.name.split("/")[-1].split(":")[0]: v.numpy()
            for v in layer.trainable_weights}
  moving = {k: v.numpy() for k, v in getattr(layer, "moving", {}).items()}
  expected, _ = _reference(name, layer, x, params, moving, axis, True,
                           kwargs)
  np.testing.assert_allclose(layer(x, training=True), expected, atol=1e-6)
  # gamma = 0 makes the output beta (0), or the activation of beta.
  np.testing.assert_allclose(expected, np.zeros(shape) if name != "frn_tlu"
                             else np.maximum(0.0, params["tau"]) *
                             np.ones(shape), atol=1e-6)
  config = layer.get_config()
  assert config["gamma_initializer"]["class_name"] == "Zeros"
  clone = type(layer).from_config(config)
  clone.build(shape)
  np.testing.assert_array_equal(clone.gamma.numpy(), np.zeros(16))


@pytest.mark.parametrize("value, message", [
    (np.ones((5, 8), np.float32), "has 8 channels but the input has 16"),
    (np.ones((3, 16), np.float32), "has 3 rows but the input's batch has 5"),
    (np.ones((5, 1, 1, 16), np.float32), "must have shape [batch, 16]"),
    (np.ones((5, 16), np.int32), "must be a floating-point tensor"),
])
def test_bad_conditional_parameters_are_clear_errors(value, message):
  layer = evonorm_layers.get_norm_activation("evonorm_b0", scale=False)
  x = np.ones((5, 4, 3, 16), np.float32)
  with pytest.raises((ValueError, TypeError)) as info:
    layer(x, training=True, gamma=value)
  assert message in str(info.value)


def _conditional_model(name):
  """x and a class vector; gain = 1 + dense(c), bias = dense(c) (BigGAN)."""
  x = tf_keras.Input((6, 6, 8), name="x")
  c = tf_keras.Input((4,), name="c")
  gain = tf_keras.layers.Dense(8, name="gain")(c)
  bias = tf_keras.layers.Dense(8, name="bias")(c)
  gamma = tf_keras.layers.Lambda(lambda g: 1.0 + g)(gain)
  norm = evonorm_layers.get_norm_activation(
      name, center=False, scale=False,
      **({"groups": 4} if name in layer_helpers.GROUPED else {}))
  y = norm(x, gamma=gamma, beta=bias)
  return tf_keras.Model([x, c], y)


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_s0", "bn_relu"])
def test_conditional_layer_saved_model_round_trip(name, tmp_path):
  rng = np.random.default_rng(4)
  model = _conditional_model(name)
  x = rng.normal(size=(3, 6, 6, 8)).astype(np.float32)
  c = rng.normal(size=(3, 4)).astype(np.float32)
  model([x, c], training=True)  # moves the moving statistics
  expected = model([x, c], training=False).numpy()

  tf_dir = os.path.join(tmp_path, "tf")
  tf.saved_model.save(model, tf_dir)
  reloaded = tf.saved_model.load(tf_dir)
  np.testing.assert_allclose(reloaded([x, c], training=False), expected,
                             rtol=1e-5, atol=1e-6)

  keras_path = os.path.join(tmp_path, "model.keras")
  model.save(keras_path)
  again = tf_keras.models.load_model(keras_path, safe_mode=False)
  np.testing.assert_allclose(again([x, c], training=False), expected,
                             rtol=1e-5, atol=1e-6)
  norm = [l for l in again.layers
          if isinstance(l, evonorm_layers.NormActivation)][0]
  assert not norm.scale and not norm.center and norm.gamma is None
