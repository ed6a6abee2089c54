"""Mixed precision and numerical robustness of every layer."""

import numpy as np
import pytest
import tensorflow as tf

import evonorm_layers
from tests import layer_helpers


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_mixed_precision_statistics_in_float32(name, policy):
  compute = tf.float16 if policy == "mixed_float16" else tf.bfloat16
  rng = np.random.default_rng(0)
  # |x| ~ 1e3: x**2 ~ 1e6 overflows float16 (max 65504) unless the
  # statistics are computed in float32.
  x = tf.cast(layer_helpers.random_input(rng, (4, 5, 5, 16), scale=1e3,
                                         shift=300.0), compute)
  layer = evonorm_layers.get_norm_activation(name, dtype=policy)
  reference = evonorm_layers.get_norm_activation(name)
  layer.build(x.shape)
  reference.build(x.shape)
  layer_helpers.randomize_variables(layer, rng)
  reference.set_weights(layer.get_weights())
  assert all(v.dtype == tf.float32 for v in layer.weights)

  for training in (True, False):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=training)
      loss = tf.reduce_sum(tf.cast(y, tf.float32))
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    assert y.dtype == compute
    assert np.all(np.isfinite(tf.cast(y, tf.float32)))
    assert all(np.all(np.isfinite(tf.cast(g, tf.float32))) for g in grads)
    expected = reference(tf.cast(x, tf.float32), training=training)
    tol = 1e-2 if compute == tf.float16 else 5e-2
    np.testing.assert_allclose(tf.cast(y, tf.float32), expected, rtol=tol,
                               atol=tol)


EDGE_CASES = {
    "constant_input": np.full((4, 3, 3, 8), 3.0, np.float32),
    "zero_input": np.zeros((4, 3, 3, 8), np.float32),
    "one_by_one_feature_maps": None,  # random, shape (4, 1, 1, 8)
    "batch_size_one": None,  # random, shape (1, 4, 4, 8)
    "batch_one_and_one_by_one": None,  # random, shape (1, 1, 1, 8)
    "rank2_batch_one": None,  # random, shape (1, 8)
}
_RANDOM_SHAPES = {
    "one_by_one_feature_maps": (4, 1, 1, 8),
    "batch_size_one": (1, 4, 4, 8),
    "batch_one_and_one_by_one": (1, 1, 1, 8),
    "rank2_batch_one": (1, 8),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_finite_outputs_and_gradients(name, case):
  x = EDGE_CASES[case]
  if x is None:
    x = layer_helpers.random_input(np.random.default_rng(0),
                                   _RANDOM_SHAPES[case])
  x = tf.constant(x)
  layer = evonorm_layers.get_norm_activation(
      name, **({"groups": 4} if name in layer_helpers.GROUPED else {}))
  for training in (True, False):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=training)
      loss = tf.reduce_sum(y * tf.range(1.0, 1.0 + y.shape[-1]))
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    assert np.all(np.isfinite(y)), (name, case, training)
    for g in grads:
      assert g is not None and np.all(np.isfinite(g)), (name, case, training)
  for variable in layer.weights:
    assert np.all(np.isfinite(variable.numpy())), variable.name


def test_element_counts_do_not_overflow_int32():
  from evonorm_layers import statistics  # pylint: disable=g-import-not-at-top
  shape = tf.constant([70_000, 70_000, 1, 3], tf.int64)  # 4.9e9 per channel
  count = statistics.element_count(shape, (0, 1, 2))
  assert count.dtype == tf.int64
  assert int(count) == 4_900_000_000
  # The moments' gradient and the fused BatchNorm path count with it.
  traced = tf.function(lambda x: tf.gradients(
      statistics.moments(x, (1, 2))[1], x)).get_concrete_function(
          tf.TensorSpec([None, None, None, 3]))
  shape_ops = [op for op in traced.graph.get_operations()
               if op.type == "Shape" and "IdentityN_grad" in op.name]
  assert shape_ops and all(op.get_attr("out_type") == tf.int64
                           for op in shape_ops), [
                               (op.name, op.get_attr("out_type"))
                               for op in shape_ops]


@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_mixed_precision_keeps_only_compute_dtype_activations(name):
  """Under mixed_bfloat16 no float32 tensor of the activation's size computed
  in the forward pass is read by the backward pass: what is kept for
  backprop is in the compute dtype (statistics and per-channel factors are
  small)."""
  layer = evonorm_layers.get_norm_activation(
      name, dtype="mixed_bfloat16",
      **({"groups": 4} if name in layer_helpers.GROUPED else {}))
  x = tf.cast(tf.random.normal((4, 6, 6, 16)), tf.bfloat16)
  layer.build(x.shape)

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=True)
      loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    return tape.gradient(loss, [x] + layer.trainable_variables)

  ops = step.get_concrete_function(x).graph.get_operations()
  start = next(i for i, op in enumerate(ops)
               if op.name.startswith("gradient_tape/"))
  backward = set(ops[start:])
  size = x.shape.num_elements()
  kept = {out.name for op in ops[:start] for out in op.outputs
          if out.dtype == tf.float32 and out.shape.num_elements() == size
          and any(c in backward for c in out.consumers())
          and "loss" not in out.name and not out.name.startswith("Cast")}
  assert not kept, kept
