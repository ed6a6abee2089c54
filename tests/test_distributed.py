"""Cross-replica batch statistics under a real MirroredStrategy.

Four logical CPU devices (tests/conftest.py) stand in for TPU/GPU replicas.
"""

import numpy as np
import pytest
import tensorflow as tf

import evonorm_layers
from tests import layer_helpers
from tests.conftest import NUM_LOGICAL_CPUS

PER_REPLICA_BATCH = 2
SHAPE = (5, 4, 8)  # H, W, C
STEPS = 2


def _strategy():
  return tf.distribute.MirroredStrategy(
      [f"/cpu:{i}" for i in range(NUM_LOGICAL_CPUS)])


def _run_distributed(strategy, layer, batches, upstream):
  """Runs training steps under ``strategy``; returns outputs, grads, moving."""

  def replica_step(x, dy):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=True)
      loss = tf.reduce_sum(y * dy)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    return y, grads

  @tf.function
  def step(x, dy):
    return strategy.run(replica_step, args=(x, dy))

  def shard(array):
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group *
                                      PER_REPLICA_BATCH:
                                      (ctx.replica_id_in_sync_group + 1) *
                                      PER_REPLICA_BATCH]))

  for x in batches:
    y, grads = step(shard(x), shard(upstream))
  outputs = np.concatenate([v.numpy() for v in y.values])
  input_grad = np.concatenate([v.numpy() for v in grads[0].values])
  param_grads = [sum(v.numpy() for v in g.values) for g in grads[1:]]
  moving = {k: v.numpy() for k, v in layer.moving.items()}
  return outputs, input_grad, param_grads, moving


def _run_single(layer, batches, upstream):
  for x in batches:
    x = tf.constant(x)
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=True)
      loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
  return (y.numpy(), grads[0].numpy(), [g.numpy() for g in grads[1:]],
          {k: v.numpy() for k, v in layer.moving.items()})


def _setup(name, synchronized, strategy):
  rng = np.random.default_rng(0)
  global_batch = PER_REPLICA_BATCH * NUM_LOGICAL_CPUS
  batches = [layer_helpers.random_input(rng, (global_batch,) + SHAPE)
             for _ in range(STEPS)]
  upstream = rng.normal(size=(global_batch,) + SHAPE).astype(np.float32)
  with strategy.scope():
    layer = evonorm_layers.get_norm_activation(name, synchronized=synchronized)
    layer.build((None,) + SHAPE)
  init = layer_helpers.randomize_variables(layer, rng)
  return layer, batches, upstream, init


@pytest.mark.parametrize("name", layer_helpers.BATCH_DEPENDENT)
def test_synchronized_equals_one_device_on_full_batch(name):
  strategy = _strategy()
  layer, batches, upstream, _ = _setup(name, True, strategy)
  reference = evonorm_layers.get_norm_activation(name)
  reference.build((None,) + SHAPE)
  reference.set_weights(layer.get_weights())

  got = _run_distributed(strategy, layer, batches, upstream)
  want = _run_single(reference, batches, upstream)

  np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-3, atol=1e-4)
  for g, w in zip(got[2], want[2]):
    np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3)
  for stat in want[3]:
    np.testing.assert_allclose(got[3][stat], want[3][stat], rtol=1e-5,
                               atol=1e-6, err_msg=stat)


@pytest.mark.parametrize("name", layer_helpers.BATCH_DEPENDENT)
def test_unsynchronized_uses_per_replica_statistics(name):
  strategy = _strategy()
  layer, batches, upstream, _ = _setup(name, False, strategy)
  weights = layer.get_weights()
  got = _run_distributed(strategy, layer, batches, upstream)

  outputs, moving = [], []
  for r in range(NUM_LOGICAL_CPUS):
    part = slice(r * PER_REPLICA_BATCH, (r + 1) * PER_REPLICA_BATCH)
    reference = evonorm_layers.get_norm_activation(name)
    reference.build((None,) + SHAPE)
    reference.set_weights(weights)
    y, _, _, m = _run_single(reference, [b[part] for b in batches],
                             upstream[part])
    outputs.append(y)
    moving.append(m)
  np.testing.assert_allclose(got[0], np.concatenate(outputs), rtol=1e-4,
                             atol=1e-5)
  # Moving statistics are ON_READ variables: reading gives the replica mean.
  for stat in moving[0]:
    np.testing.assert_allclose(
        got[3][stat], np.mean([m[stat] for m in moving], axis=0), rtol=1e-5,
        atol=1e-6, err_msg=stat)
  # Per-replica statistics differ from full-batch ones, so the test can fail.
  full = evonorm_layers.get_norm_activation(name)
  full.build((None,) + SHAPE)
  full.set_weights(weights)
  assert not np.allclose(got[0], _run_single(full, batches, upstream)[0],
                         rtol=1e-3, atol=1e-3)


def test_synchronized_uses_one_collective_per_call():
  strategy = _strategy()
  with strategy.scope():
    layer = evonorm_layers.EvoNormB0(synchronized=True)
    layer.build((None,) + SHAPE)

  @tf.function
  def step(x):
    return strategy.run(lambda x: layer(x, training=True), args=(x,))

  x = tf.zeros((PER_REPLICA_BATCH * NUM_LOGICAL_CPUS,) + SHAPE)
  dist = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(x))
  graph = step.get_concrete_function(next(iter(dist))).graph
  collectives = [op for op in graph.get_operations()
                 if op.type.startswith("Collective")]
  # One all-reduce per replica and layer call (tf_keras sync BN uses three).
  assert len(collectives) == NUM_LOGICAL_CPUS, [op.type for op in collectives]


@pytest.mark.parametrize("synchronized", [False, True])
@pytest.mark.parametrize("name", layer_helpers.BATCH_DEPENDENT)
def test_empty_replica_batch_keeps_moving_statistics_finite(name,
                                                            synchronized):
  """The last batch of an uneven dataset can leave a replica with no
  samples: its statistics are 0/0 and must not reach the moving ones."""
  strategy = _strategy()
  rng = np.random.default_rng(3)
  with strategy.scope():
    layer = evonorm_layers.get_norm_activation(name, synchronized=synchronized)
    layer.build((None,) + SHAPE)
  layer_helpers.randomize_variables(layer, rng)
  before = {k: v.numpy() for k, v in layer.moving.items()}
  # What one device computes on the replicas' data.
  reference = evonorm_layers.get_norm_activation(name)
  reference.build((None,) + SHAPE)
  reference.set_weights(layer.get_weights())
  full = layer_helpers.random_input(rng, (5,) + SHAPE)
  # Replicas 1 and 3 get empty batches (the last batch of an uneven
  # dataset split over the replicas).
  parts = [full[:3], full[:0], full[3:], full[:0]]

  @tf.function
  def step(x):
    def replica_step(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y)
      return y, tape.gradient(loss, [x] + layer.trainable_variables)
    return strategy.run(replica_step, args=(x,))

  y, grads = step(strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group])))
  assert [v.shape[0] for v in y.values] == [3, 0, 2, 0]
  for g in tf.nest.flatten(grads):
    for value in getattr(g, "values", (g,)):
      assert np.all(np.isfinite(value.numpy()))
  per_replica = []
  for part in ([full] if synchronized else [parts[0], parts[2]]):
    clone = evonorm_layers.get_norm_activation(name)
    clone.build((None,) + SHAPE)
    clone.set_weights(reference.get_weights())
    clone(part, training=True)
    per_replica.append({k: v.numpy() for k, v in clone.moving.items()})
  for stat, variable in layer.moving.items():
    copies = [v.numpy() for v in variable.values]
    assert all(np.all(np.isfinite(c)) for c in copies), stat
    if synchronized:  # every replica folds in the global statistics
      for c in copies:
        np.testing.assert_allclose(c, per_replica[0][stat], rtol=1e-5,
                                   atol=1e-6)
    else:  # replicas with data update, empty ones keep their copy
      np.testing.assert_allclose(copies[0], per_replica[0][stat], rtol=1e-5,
                                 atol=1e-6)
      np.testing.assert_allclose(copies[2], per_replica[1][stat], rtol=1e-5,
                                 atol=1e-6)
      for c in (copies[1], copies[3]):
        np.testing.assert_allclose(c, before[stat], rtol=1e-6)
