"""Second derivatives of every layer against plain autodiff of its formula.

Gradient penalties (R1, WGAN-GP), the search's stability protocol and
gradient-norm regularizers differentiate a gradient. For each layer, with
``L = sum(w * layer(x))``, ``g = dL/dx`` and ``P = sum(g * v)``, the
Hessian-vector products ``dP/dx`` and ``dP/dparams`` must equal those of the
float64 reference formula (``tests/numpy_reference.py`` run with
``tf.experimental.numpy``), eagerly and inside ``tf.function``, for ordinary
inputs and inputs with a large mean.
"""

import numpy as np
import pytest
import tensorflow as tf

import evonorm_layers
from evonorm_layers import fused
from evonorm_layers.search import known_layers
from evonorm_layers.search.layer import SearchedNormActivation
from tests import layer_helpers
from tests.numpy_reference import reference_forward

SHAPE = (4, 3, 3, 8)
INPUTS = {"ordinary": (0.5, 2.0), "large_mean": (50.0, 3.0)}


def _short(variable):
  return variable.name.split("/")[-1].split(":")[0]


def _second_order(fn, x, params, w, v):
  """``(dP/dx, [dP/dp for p in params])`` for ``P = <d<w, fn>/dx, v>``."""
  with tf.GradientTape() as outer:
    outer.watch([x] + params)
    with tf.GradientTape() as inner:
      inner.watch(x)
      loss = tf.reduce_sum(w * fn(x))
    g = inner.gradient(loss, x)
    product = tf.reduce_sum(g * v)
  # d/dbeta is 0: beta does not enter the first derivative.
  return outer.gradient(product, [x] + params,
                        unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _check(layer, reference_name, kwargs, case, mode, seed=0):
  rng = np.random.default_rng(seed)
  layer.build(SHAPE)
  params, moving = layer_helpers.randomize_variables(layer, rng)
  # A searched layer's moving statistics are per node ("node4_variance").
  moving = {k.split("_", 1)[1] if k.startswith("node") else k: v
            for k, v in moving.items()}
  shift, scale = INPUTS[case]
  x = tf.constant(layer_helpers.random_input(rng, SHAPE, scale, shift))
  w = tf.constant(rng.normal(size=SHAPE).astype(np.float32))
  v = tf.constant(rng.normal(size=SHAPE).astype(np.float32))
  by_name = {_short(var): var for var in layer.trainable_variables}
  variables = [by_name[k] for k in params]

  def run():
    return _second_order(lambda t: layer(t, training=True), x, variables, w,
                         v)

  got = tf.function(run)() if mode == "function" else run()

  p64 = {k: tf.constant(val, tf.float64) for k, val in params.items()}

  def reference(t):
    return reference_forward(
        reference_name, t, p64, moving, xp=tf.experimental.numpy,
        training=True, eps=kwargs["epsilon"],
        momentum=kwargs.get("momentum"), groups=kwargs.get("groups"),
        nonlinearity=True)[0]

  want = _second_order(reference, tf.cast(x, tf.float64), list(p64.values()),
                       tf.cast(w, tf.float64), tf.cast(v, tf.float64))
  for label, g, r in zip(["x"] + list(params), got, want):
    np.testing.assert_allclose(g, r, rtol=1e-2, atol=1e-2 * np.abs(r).max(),
                               err_msg=f"d/d{label}")


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("case", sorted(INPUTS))
@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_hessian_vector_products_match_autodiff(name, case, mode):
  kwargs = layer_helpers.layer_kwargs(name)
  _check(evonorm_layers.get_norm_activation(name, **kwargs), name, kwargs,
         case, mode)


# Searched layers whose graph computes the reference formula for any value
# of the variables (B1 uses v1 for its constant 1, BN/GN-ReLU put the affine
# elsewhere).
_SEARCHED = ["evonorm_b0", "evonorm_b2", "evonorm_s0", "evonorm_s1",
             "evonorm_s2", "rs_rej"]


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("name", _SEARCHED)
def test_searched_layers_second_order(name, mode):
  kwargs = {"epsilon": 1e-3, "groups": 4, "momentum": 0.7}
  layer = SearchedNormActivation(known_layers.KNOWN_GRAPHS[name], **kwargs)
  _check(layer, name, kwargs, "ordinary", mode, seed=1)


def test_first_order_step_does_not_keep_elementwise_intermediates():
  """Differentiable twice, yet in a first-order training step the backward
  ops read nothing computed by the forward elementwise part: they recompute
  it (the memory saving of ``tf.recompute_grad``)."""
  layer = evonorm_layers.EvoNormS0(groups=4)
  x = tf.random.normal((8, 6, 6, 32))

  @tf.function
  def step(x):
    with fused.forced("off"):  # the composite ops (the fused path: below)
      with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x, training=True) ** 2)
      return tape.gradient(loss, x)

  ops = step.get_concrete_function(x).graph.get_operations()
  # Ops are listed in creation order: the backward pass starts at the first
  # op of the tape's gradient.
  start = next(i for i, op in enumerate(ops)
               if op.name.startswith("gradient_tape/"))
  backward = set(ops[start:])
  in_backward = lambda op: op in backward
  sigmoids = [op for op in ops if op.type == "Sigmoid"]
  forward = [op for op in sigmoids if not in_backward(op)]
  assert len(forward) == 1 and len(sigmoids) == 2, [o.name for o in sigmoids]
  # Everything downstream of the forward sigmoid, up to the layer's output.
  frontier, downstream = list(forward), set()
  while frontier:
    op = frontier.pop()
    for out in op.outputs:
      for consumer in out.consumers():
        if consumer not in downstream and not in_backward(consumer):
          downstream.add(consumer)
          frontier.append(consumer)
  readers = {c.name for op in [*forward, *downstream] for out in op.outputs
             for c in out.consumers() if in_backward(c)}
  # Only the loss's own gradient (of ``y ** 2``) reads the layer's output.
  assert all("pow" in r.lower() or "square" in r.lower() or "mul" in r.lower()
             for r in readers), readers
  assert not any("sigmoid" in r.lower() for r in readers), readers


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_s0"])
def test_fused_backward_reads_only_the_input_and_small_operands(name):
  """On the fused path the backward kernel reads the forward kernel's inputs
  (x and the [K, N, C] operands), never its output."""
  layer = evonorm_layers.get_norm_activation(name)
  x = tf.random.normal((8, 6, 6, 32))

  @tf.function
  def step(x):
    with fused.forced("on"):
      with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x, training=True) ** 2)
      return tape.gradient(loss, x)

  ops = step.get_concrete_function(x).graph.get_operations()
  forward = [op for op in ops if op.type.startswith("EvoNormFused")
             and op.type.endswith("Forward")]
  backward = [op for op in ops if op.type.startswith("EvoNormFused")
              and op.type.endswith("Backward")]
  assert len(forward) == 1 and len(backward) == 1, [o.type for o in ops]
  produced = {t.name for t in forward[0].outputs}
  read = [t.name for t in backward[0].inputs]
  assert not produced & set(read), read
  # dy, x and the [K, N, C] operands: one activation-sized tensor besides dy.
  assert [t.shape.rank for t in backward[0].inputs] == [4, 4, 3]
