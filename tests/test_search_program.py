"""The interpreted layer equals the compiled one, for any graph.

``ProgramNormActivation`` runs a graph held in variables, so the search
traces each anchor once; these tests check it computes exactly what
``SearchedNormActivation`` computes for the same graph: outputs in training
and inference (moving statistics included), first derivatives with respect
to the input and every weight, and the second derivatives the stability
protocol differentiates. The compiled layer's shared traces (one traced
function for every layer of a graph, the search's compiled models) compute
what it computes inline.
"""

import dataclasses
import functools
import gc
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import func_graph
# pylint: enable=g-direct-tensorflow-import

from evonorm_layers.search import evolution
from evonorm_layers.search import known_layers
from evonorm_layers.search import program
from evonorm_layers.search.graph import graph
from evonorm_layers.search.layer import SearchedNormActivation
from evonorm_layers.search.layer import SharedTraces

SHAPE = (6, 5, 5, 8)


def _random_graphs(count, seed=3):
  rng = np.random.default_rng(seed)
  found = []
  while len(found) < count:
    g = evolution.random_graph(rng)
    if g.uses("x"):
      found.append(g)
  return found


GRAPHS = {**known_layers.KNOWN_GRAPHS, **{
    f"b0_{k}": g for k, g in known_layers.B0_VARIANTS.items()}, **{
    f"random_{i}": g for i, g in enumerate(_random_graphs(6))},
    "all_aggregations": graph(
        ("mean_bwh", 0), ("rms_whc", 0), ("std_whc/g", 0), ("rms_bwh", 0),
        ("add", 4, 5), ("add", 8, 6), ("mul", 9, 7), ("add", 10, 0)),
}


def _pair(g, nonlinearity=True):
  """The compiled and the interpreted layer, with equal random weights."""
  compiled = SearchedNormActivation(g, groups=2, nonlinearity=nonlinearity)
  interpreted = program.ProgramNormActivation(groups=2,
                                              nonlinearity=nonlinearity)
  compiled.build(SHAPE)
  interpreted.build(SHAPE)
  program.load_program(interpreted, g)
  rng = np.random.default_rng(0)
  for name in ("gamma", "beta", "v0", "v1"):
    value = rng.uniform(0.5, 1.5, SHAPE[-1]).astype(np.float32)
    targets = [getattr(layer, "v", {}).get(name) if name in ("v0", "v1")
               else getattr(layer, name) for layer in (compiled, interpreted)]
    for target in targets:
      if target is not None:
        target.assign(value)
  return compiled, interpreted


def _inputs(seed=1):
  rng = np.random.default_rng(seed)
  return tf.constant(rng.normal(0.4, 1.3, SHAPE).astype(np.float32))


def _close(a, b):
  a, b = np.asarray(a), np.asarray(b)
  finite = np.isfinite(a)
  np.testing.assert_array_equal(finite, np.isfinite(b))
  np.testing.assert_allclose(a[finite], b[finite], rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_outputs_and_gradients_equal_the_compiled_layer(name):
  compiled, interpreted = _pair(GRAPHS[name])
  x = _inputs()
  results = []
  for layer in (compiled, interpreted):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=True)
      loss = tf.reduce_sum(y * tf.sin(x))
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    # Two more training calls move the moving statistics; then inference.
    layer(x * 0.5 + 0.2, training=True)
    layer(_inputs(2), training=True)
    results.append([y, *grads, layer(_inputs(4), training=False)])
  for a, b in zip(*results):
    _close(a, b)


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_s0", "bn_relu",
                                  "all_aggregations"])
def test_v_gradients_and_second_order_equal_the_compiled_layer(name):
  compiled, interpreted = _pair(GRAPHS[name])
  x = _inputs()
  direction = tf.constant(np.random.default_rng(5).normal(
      size=SHAPE).astype(np.float32))
  results = []
  for layer in (compiled, interpreted):
    v = {"v0": None, "v1": None}
    v.update({k: w for k, w in (getattr(layer, "v", {}) or {}).items()
              if GRAPHS[name].uses(k)})
    weights = [w for w in v.values() if w is not None]
    with tf.GradientTape() as outer:
      outer.watch(x)
      with tf.GradientTape() as inner:
        inner.watch(x)
        loss = tf.reduce_sum(tf.square(layer(x, training=True)))
      dx, *dv = inner.gradient(loss, [x] + weights)
      # Hessian-vector product through the gradient, as the stability
      # protocol's ascent differentiates the gradient norm.
      projected = tf.reduce_sum(dx * direction)
    results.append([dx, *dv, outer.gradient(projected, x)])
  for a, b in zip(*results):
    _close(a, b)


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_s0",
                                  "b0_no_local_term"])
def test_sites_without_nonlinearity_equal_the_compiled_layer(name):
  compiled, interpreted = _pair(GRAPHS[name], nonlinearity=False)
  x = _inputs()
  direction = tf.sin(x)
  outputs = []
  for layer in (compiled, interpreted):
    with tf.GradientTape() as outer:
      outer.watch(x)
      with tf.GradientTape() as inner:
        inner.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.square(y) * direction)
      dx = inner.gradient(loss, x)
      projected = tf.reduce_sum(dx * direction)
    outputs.append([y, dx, outer.gradient(projected, x),
                    layer(_inputs(3), training=False)])
  for a, b in zip(*outputs):
    _close(a, b)


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_s0", "bn_relu",
                                  "all_aggregations", "random_0", "random_1"])
def test_shared_traces_compute_what_the_layer_traces_inline(name):
  """Two layers sharing traces against two tracing inline, in one traced
  step as in training: outputs, first derivatives (input, affine, v0/v1),
  the Hessian-vector product of the exact stability ascent, the moving
  statistics after several steps, and inference; one function per training
  flag serves both layers, which have different channel counts.

  A function call's backward pass sums in another order, and some weight
  gradients cancel (before a normalization, the first layer's affine
  barely changes the loss: BN-ReLU's beta gradient is ~1e-4 from terms of
  ~10), so the tolerance is measured: a third, inline, stack sees each
  batch in another order, which changes nothing but the order of the sums.
  """
  traces = SharedTraces()
  stacks = {"inline": [SearchedNormActivation(GRAPHS[name], groups=2)
                       for _ in range(2)],
            "shared": [SearchedNormActivation(GRAPHS[name], groups=2,
                                              shared_traces=traces)
                       for _ in range(2)],
            "reordered": [SearchedNormActivation(GRAPHS[name], groups=2)
                          for _ in range(2)]}
  wide = SHAPE[:-1] + (2 * SHAPE[-1],)
  rng = np.random.default_rng(0)
  for position, shape in enumerate((SHAPE, wide)):
    same = [layers[position] for layers in stacks.values()]
    for layer in same:
      layer.build(shape)
    for weights in zip(*[l.trainable_weights for l in same]):
      value = rng.uniform(0.5, 1.5, weights[0].shape).astype(np.float32)
      for w in weights:
        w.assign(value)
  direction = tf.sin(_inputs(6))
  y_direction = tf.cos(tf.concat([_inputs(7), _inputs(8)], -1))
  # (Tuples: a tf.function would turn an array argument into a tensor.)
  orders = {key: tuple(range(SHAPE[0])) for key in stacks}
  orders["reordered"] = (3, 1, 5, 0, 2, 4)

  def widen(h):  # the second layer sees twice the channels
    return tf.concat([h, 0.5 * h + 0.1], -1)

  def step(layers, x, *, order):
    restore = np.argsort(order)
    x = tf.gather(x, order)
    weights = [w for l in layers for w in l.trainable_weights]
    with tf.GradientTape() as outer:
      outer.watch(x)
      with tf.GradientTape() as inner:
        inner.watch(x)
        y = layers[1](widen(layers[0](x, training=True)), training=True)
        loss = tf.reduce_sum(tf.square(y) * tf.gather(y_direction, order))
      dx, *dw = inner.gradient(loss, [x] + weights)
      projected = tf.reduce_sum(dx * tf.gather(direction, order))
    hvp = outer.gradient(projected, x)
    return [tf.gather(y, restore), tf.gather(dx, restore), *dw,
            tf.gather(hvp, restore)]

  def predict(layers, x, *, order):
    y = layers[1](widen(layers[0](tf.gather(x, order), training=False)),
                  training=False)
    return tf.gather(y, np.argsort(order))

  results = {}
  for key, layers in stacks.items():
    run = tf.function(functools.partial(step, layers, order=orders[key]))
    first = run(_inputs())
    for seed in (2, 3):
      run(_inputs(seed))
    infer = tf.function(functools.partial(predict, layers,
                                          order=orders[key]))
    results[key] = [np.asarray(t) for t in [
        *first, infer(_inputs(4)),
        *[v for l in layers for v in l.non_trainable_weights]]]
  assert len({len(r) for r in results.values()}) == 1
  for a, b, reordered in zip(*results.values()):
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    finite = np.isfinite(a) & np.isfinite(reordered)
    noise = float(np.abs(a[finite] - reordered[finite]).max(initial=0.0))
    scale = max(1.0, float(np.abs(a[finite]).max(initial=0.0)))
    np.testing.assert_allclose(a[finite], b[finite], rtol=2e-4,
                               atol=1e-5 * scale + 4 * noise)
  assert len(traces) == 2  # training, inference


def test_one_layer_runs_many_graphs_without_retracing():
  layer = program.ProgramNormActivation(groups=2)
  layer.build(SHAPE)

  @tf.function
  def forward(x):
    return layer(x, training=True)

  x = _inputs()
  for name in ("evonorm_b0", "evonorm_s0", "gn_relu", "random_2"):
    program.load_program(layer, GRAPHS[name])
    reference = SearchedNormActivation(GRAPHS[name], groups=2)
    _close(forward(x), reference(x, training=True))
  assert forward.experimental_get_tracing_count() == 1


def test_encode_rejects_nothing_it_cannot_hold():
  g = GRAPHS["evonorm_b2"]
  encoded, size, batch = program.encode(g)
  assert size == len(g.canonical().nodes) and batch
  assert encoded.shape == (10, program.COLUMNS)
  with pytest.raises(ValueError, match="no ProgramNormActivation"):
    program.load_program(tf.Module(), g)


@pytest.mark.heavy
def test_sessions_score_like_freshly_built_compiled_models():
  """A candidate evaluated on a reused anchor session (reset weights,
  optimizer and data) scores what a freshly built compiled model scores,
  and the same again when evaluated a second time; the search's placement
  takes its first anchor's stability record from the session, the other
  anchors' and every accuracy from the compiled models."""
  from evonorm_layers.search import evaluation  # pylint: disable=g-import-not-at-top
  from evonorm_layers.search import tensorflow_hygiene  # pylint: disable=g-import-not-at-top
  from evonorm_layers.search import proxy_config  # pylint: disable=g-import-not-at-top
  from evonorm_layers.search import proxy_data  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "bench"))
  from search_placements import PLACEMENTS  # pylint: disable=g-import-not-at-top
  config = proxy_config.ProxyConfig(
      dataset="digits", image_size=16, width=4, batch_size=32,
      anchors=("resnet",), quality_steps=10, train_steps=15,
      eval_examples=200, stability_steps=2, quality_threshold=0.0,
      # The laptop preset's; the exact direction's second derivatives are
      # compared layer by layer above.
      stability_direction="finite_difference")
  data = proxy_data.load_data(config)
  sessions = {}
  records = {}
  for name, paths in (("evonorm_b0", ("hybrid", "sessions", "compiled")),
                      ("evonorm_s0", ("sessions",)),  # another graph
                      ("evonorm_b0", ("sessions", "hybrid"))):
    for path in paths:
      record = evaluation.evaluate(GRAPHS[name], config, data,
                                   sessions=sessions,
                                   placement_class=PLACEMENTS[path])
      assert record["status"] == "accepted", (record.get("reason"), record.get("rejection"))
      records.setdefault((name, path), []).append(record)
  session, fresh = (records[("evonorm_b0", "sessions")][0],
                    records[("evonorm_b0", "compiled")][0])
  for key in ("quality", "fitness"):
    np.testing.assert_allclose(session[key]["resnet"], fresh[key]["resnet"],
                               atol=0.03)
  np.testing.assert_allclose(
      session["stability"]["resnet"]["max_grad_norm"],
      fresh["stability"]["resnet"]["max_grad_norm"], rtol=1e-3)
  hybrid, hybrid_again = records[("evonorm_b0", "hybrid")]
  first, again = records[("evonorm_b0", "sessions")]
  assert hybrid["stability"] == first["stability"]
  for key in ("quality", "fitness"):
    np.testing.assert_allclose(
        hybrid[key]["resnet"],
        records[("evonorm_b0", "compiled")][0][key]["resnet"], atol=0.03)
  for a, b in ((first, again), (hybrid, hybrid_again)):
    assert a["fitness"] == b["fitness"] and a["quality"] == b["quality"]
  # The first evaluation (hybrid) built the session; later ones reuse it.
  assert "setup" in hybrid["seconds"] and "setup" not in first["seconds"]
  # With two anchors, the search's placement tests the second one's
  # stability on its compiled model: the same record as the compiled one's.
  second = evaluation.evaluate(
      GRAPHS["evonorm_b0"], dataclasses.replace(
          config, anchors=("mobilenet", "resnet")), data, sessions=sessions)
  assert second["status"] == "accepted" and list(second["stability"]) == [
      "mobilenet", "resnet"]
  np.testing.assert_allclose(
      second["stability"]["resnet"]["max_grad_norm"],
      fresh["stability"]["resnet"]["max_grad_norm"], rtol=1e-3)
  for key in ("quality", "fitness"):
    np.testing.assert_allclose(second[key]["resnet"], fresh[key]["resnet"],
                               atol=0.03)
  # Nothing compiled for a candidate outlives its evaluation (TensorFlow's
  # gradient registry kept every compiled model's graphs alive).
  def alive():
    gc.collect()
    return (tensorflow_hygiene.custom_gradient_names(), sum(
        isinstance(o, func_graph.FuncGraph) for o in gc.get_objects()))
  before = alive()
  evaluation.evaluate(GRAPHS["evonorm_b0"], config, data, sessions=sessions)
  assert alive() == before
