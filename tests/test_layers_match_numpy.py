"""Every layer against an independent NumPy implementation of its formula."""

import numpy as np
import pytest
import tensorflow as tf

import evonorm_layers
from tests import layer_helpers
from tests.numpy_reference import reference_forward

# (shape, channel axis): every supported rank, channels-last and -first.
LAYOUTS = {
    "rank4_channels_last": ((6, 5, 7, 16), -1),
    "rank4_channels_first": ((6, 16, 5, 7), 1),
    "rank2": ((8, 16), -1),
    "rank3": ((4, 9, 16), -1),
    "rank5_channels_last": ((3, 3, 4, 5, 16), -1),
    "rank5_channels_first": ((3, 16, 3, 4, 5), 1),
}
TRAINING_STEPS = 3


def _check_against_reference(name, shape, axis, nonlinearity, seed=0):
  rng = np.random.default_rng(seed)
  kwargs = layer_helpers.layer_kwargs(name, axis=axis,
                                      nonlinearity=nonlinearity)
  layer = evonorm_layers.get_norm_activation(name, **kwargs)
  layer.build(shape)
  params, moving = layer_helpers.randomize_variables(layer, rng)
  ref_kwargs = dict(eps=kwargs["epsilon"], momentum=kwargs.get("momentum"),
                    groups=kwargs.get("groups"), nonlinearity=nonlinearity)

  for _ in range(TRAINING_STEPS):
    x = layer_helpers.random_input(rng, shape)
    expected, moving = reference_forward(name, x, params, moving, axis=axis,
                                         training=True, **ref_kwargs)
    np.testing.assert_allclose(layer(x, training=True), expected,
                               rtol=2e-4, atol=2e-5)
    for stat, value in moving.items():
      np.testing.assert_allclose(layer.moving[stat].numpy(), value,
                                 rtol=1e-5, atol=1e-6, err_msg=stat)

  x = layer_helpers.random_input(rng, shape)
  expected, _ = reference_forward(name, x, params, moving, axis=axis,
                                  training=False, **ref_kwargs)
  np.testing.assert_allclose(layer(x, training=False), expected, rtol=2e-4,
                             atol=2e-5)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_matches_numpy_training_and_inference(name, layout):
  shape, axis = LAYOUTS[layout]
  _check_against_reference(name, shape, axis, nonlinearity=True)


@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_without_nonlinearity_every_variable_is_used(name):
  layer = evonorm_layers.get_norm_activation(name, nonlinearity=False)
  x = tf.constant(layer_helpers.random_input(np.random.default_rng(8),
                                             (4, 3, 3, 8)))
  with tf.GradientTape() as tape:
    y = layer(x, training=True)
  grads = tape.gradient(y, layer.trainable_variables)
  assert {v.name.split("/")[-1] for v in layer.trainable_variables} == {
      "gamma:0", "beta:0"}
  assert all(g is not None for g in grads)


@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_without_nonlinearity_still_normalizes(name):
  _check_against_reference(name, (6, 5, 7, 16), -1, nonlinearity=False)
  # Normalized: an input scaled by 1000 gives the same output (the
  # reference's affine-only shortcut would scale it by 1000).
  layer = evonorm_layers.get_norm_activation(name, nonlinearity=False)
  x = layer_helpers.random_input(np.random.default_rng(1), (8, 4, 4, 32))
  np.testing.assert_allclose(layer(x * 1000.0, training=True),
                             layer(x, training=True), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_channels_first_equals_transposed_channels_last(name):
  rng = np.random.default_rng(2)
  x = layer_helpers.random_input(rng, (4, 6, 5, 16))
  last = evonorm_layers.get_norm_activation(
      name, **layer_helpers.layer_kwargs(name, axis=-1))
  first = evonorm_layers.get_norm_activation(
      name, **layer_helpers.layer_kwargs(name, axis=1))
  last.build(x.shape)
  first.build((4, 16, 6, 5))
  layer_helpers.randomize_variables(last, rng)
  first.set_weights(last.get_weights())
  x_first = np.transpose(x, (0, 3, 1, 2))
  for training in (True, False):
    np.testing.assert_allclose(
        np.transpose(first(x_first, training=training), (0, 2, 3, 1)),
        last(x, training=training), rtol=1e-5, atol=1e-5)
  for a, b in zip(first.get_weights(), last.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", layer_helpers.GROUPED)
def test_groups_fall_back_to_largest_divisor(name):
  layer = evonorm_layers.get_norm_activation(name, groups=32)
  layer.build((2, 4, 4, 24))
  assert layer.resolved_groups == 24
  layer = evonorm_layers.get_norm_activation(name, groups=8)
  layer.build((2, 4, 4, 12))
  assert layer.resolved_groups == 6
  _check_against_reference_with_groups(name, channels=12, groups=8,
                                       resolved=6)


def _check_against_reference_with_groups(name, channels, groups, resolved):
  rng = np.random.default_rng(3)
  layer = evonorm_layers.get_norm_activation(name, groups=groups)
  x = layer_helpers.random_input(rng, (3, 4, 4, channels))
  layer.build(x.shape)
  params, moving = layer_helpers.randomize_variables(layer, rng)
  expected, _ = reference_forward(name, x, params, moving, training=True,
                                  eps=1e-5, groups=resolved,
                                  nonlinearity=True)
  np.testing.assert_allclose(layer(x, training=True), expected, rtol=2e-4,
                             atol=2e-5)


@pytest.mark.parametrize("name", layer_helpers.BATCH_DEPENDENT)
def test_moving_statistics_are_not_differentiated(name):
  layer = evonorm_layers.get_norm_activation(name)
  x = tf.constant(layer_helpers.random_input(np.random.default_rng(4),
                                             (4, 3, 3, 8)))
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=True)
  moving = list(layer.moving.values())
  assert all(not v.trainable for v in moving)
  assert all(v.dtype == tf.float32 for v in moving)
  grads = tape.gradient(y, moving + [x])
  assert all(g is None for g in grads[:-1])
  assert grads[-1] is not None


@pytest.mark.parametrize("name", layer_helpers.BATCH_DEPENDENT)
def test_frozen_layer_uses_moving_statistics(name):
  rng = np.random.default_rng(5)
  layer = evonorm_layers.get_norm_activation(name)
  x = layer_helpers.random_input(rng, (4, 3, 3, 8))
  layer.build(x.shape)
  layer_helpers.randomize_variables(layer, rng)
  before = [v.numpy() for v in layer.moving.values()]
  inference = layer(x, training=False)
  layer.trainable = False
  np.testing.assert_allclose(layer(x, training=True), inference)
  for a, b in zip(before, layer.moving.values()):
    np.testing.assert_array_equal(a, b.numpy())


def test_training_as_tensor_selects_the_same_branches():
  layer = evonorm_layers.EvoNormB0()
  x = layer_helpers.random_input(np.random.default_rng(6), (4, 3, 3, 8))
  fn = tf.function(lambda x, t: layer(x, training=t))
  eager_inference = layer(x, training=False)
  np.testing.assert_allclose(fn(x, tf.constant(False)), eager_inference,
                             rtol=1e-6)
  train = fn(x, tf.constant(True))
  assert not np.allclose(train, eager_inference)


@pytest.mark.parametrize("layout", ["rank4_channels_last",
                                    "rank4_channels_first", "rank2", "rank3"])
@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_gradients_match_autodiff_of_the_reference(name, layout):
  """The library's hand-written gradients (moments, recomputed elementwise
  parts) against plain TensorFlow autodiff of the reference formulas."""
  shape, axis = LAYOUTS[layout]
  rng = np.random.default_rng(7)
  kwargs = layer_helpers.layer_kwargs(name, axis=axis)
  layer = evonorm_layers.get_norm_activation(name, **kwargs)
  layer.build(shape)
  params, moving = layer_helpers.randomize_variables(layer, rng)
  x = tf.constant(layer_helpers.random_input(rng, shape))
  upstream = tf.constant(rng.normal(size=shape).astype(np.float32))

  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=True)
  by_name = {v.name.split("/")[-1].split(":")[0]: v
             for v in layer.trainable_variables}
  got = tape.gradient(y, [x] + [by_name[k] for k in params],
                      output_gradients=upstream)

  x64 = tf.cast(x, tf.float64)
  p64 = {k: tf.constant(v, tf.float64) for k, v in params.items()}
  with tf.GradientTape() as tape:
    tape.watch([x64] + list(p64.values()))
    ref, _ = reference_forward(
        name, x64, p64, moving, axis=axis, xp=tf.experimental.numpy,
        training=True, eps=kwargs["epsilon"], momentum=kwargs.get("momentum"),
        groups=kwargs.get("groups"), nonlinearity=True)
  want = tape.gradient(ref, [x64] + list(p64.values()),
                       output_gradients=tf.cast(upstream, tf.float64))
  for label, g, w in zip(["x"] + list(params), got, want):
    np.testing.assert_allclose(g, w, rtol=2e-3, atol=2e-3 * np.abs(w).max(),
                               err_msg=label)
