"""The fused CPU kernels of the EvoNorms against the composite TensorFlow ops.

Both paths are the same layer with the same variables; only
``evonorm_layers.fused`` mode differs. Outputs and first derivatives must agree
to 1e-5 relative (to the largest magnitude of the tensor), for every EvoNorm,
layout and rank, with the conditional affine, in float16/bfloat16, and with
cross-replica statistics; second derivatives are checked against autodiff of
the formula in tests/test_second_order.py, which runs the fused path.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import evonorm_layers
from evonorm_layers import formulas
from evonorm_layers import fused
from evonorm_layers import layout as layout_lib
from tests import layer_helpers
from tests.conftest import NUM_LOGICAL_CPUS

EVONORMS = ["evonorm_b0", "evonorm_b1", "evonorm_b2", "evonorm_s0",
            "evonorm_s1", "evonorm_s2"]
# (shape, axis): ranks 2 to 5, channels last and first.
LAYOUTS = [((6, 16), -1), ((3, 7, 16), -1), ((4, 5, 6, 16), -1),
           ((4, 16, 5, 6), 1), ((2, 3, 4, 5, 16), -1), ((2, 16, 3, 4, 5), 1)]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _layer(name, axis=-1, **kwargs):
  if name.startswith("evonorm_s"):
    kwargs.setdefault("groups", 4)
  return evonorm_layers.get_norm_activation(name, axis=axis, epsilon=1e-3,
                                            **kwargs)


def _randomize(layer, rng):
  for v in layer.trainable_variables:
    v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32) *
             rng.choice([-1.0, 1.0], v.shape).astype(np.float32))


def _forward_and_gradients(layer, x, path, **call_kwargs):
  w = tf.cos(tf.range(tf.size(x), dtype=tf.float32))
  w = tf.reshape(w, x.shape)
  watched = [x] + [v for v in call_kwargs.values() if isinstance(v, tf.Tensor)]
  with fused.forced(path):
    with tf.GradientTape() as tape:
      tape.watch(watched)
      y = layer(x, training=True, **call_kwargs)
      loss = tf.reduce_sum(tf.cast(y, tf.float32) * w)
    grads = tape.gradient(loss, watched + layer.trainable_variables)
  return [y] + grads


def _assert_agree(got, want, rtol=1e-5):
  for i, (g, r) in enumerate(zip(got, want)):
    g = np.asarray(tf.cast(g, tf.float32))
    r = np.asarray(tf.cast(r, tf.float32))
    scale = np.abs(r).max()
    np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * scale,
                               err_msg=f"output {i}")


def test_kernels_build_here():
  """CI has g++: the fused path must really be tested, not fall back."""
  assert fused.available(), fused._library_error  # pylint: disable=protected-access


# The families of evonorm_layers.formulas in NumPy, affine included.
NUMPY_FAMILIES = {
    "BLinear": lambda x, s, a, b, g, h, eps: x / np.maximum(s, a * x + b) * g
                                             + h,
    "BSqrt": lambda x, s, m, g, h, eps: x / np.maximum(
        s, np.sign(m - x) * np.sqrt(np.abs(m - x) + eps)) * g + h,
    "SSigmoid": lambda x, a, g, h, eps: x / (1.0 + np.exp(-a * x)) * g + h,
}


@pytest.mark.parametrize("family", sorted(formulas.FAMILIES))
def test_each_family_formula_and_kernel_against_numpy(family):
  """formulas.py (the layers' one definition) and the C++ kernel of each
  family against NumPy, on random per-(sample, channel) operands of either
  sign, so every branch of the max is taken."""
  rng = np.random.default_rng(5)
  shape = (3, 4, 5, 8)
  layout = layout_lib.TensorLayout.from_shape(list(shape), -1,
                                              layer_name="test")
  x = rng.normal(0.0, 2.0, shape).astype(np.float32)
  operands = [rng.uniform(0.2, 2.0, (3, 1, 1, 8)).astype(np.float32) *
              (1 if i == 0 else rng.choice([-1, 1], (3, 1, 1, 8)))
              for i in range(len(formulas.operand_names(family)))]
  operands = [o.astype(np.float32) for o in operands]
  want = NUMPY_FAMILIES[family](x, *operands, 1e-3)
  got = formulas.evaluate(family, tf.constant(x), operands, 1e-3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with fused.forced("on"):
    kernel = fused.apply(family, tf.constant(x), layout,
                         [tf.constant(o) for o in operands], 1e-3)
  np.testing.assert_allclose(kernel, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("name", EVONORMS)
def test_fused_equals_composite(name, shape, axis):
  rng = np.random.default_rng(0)
  layer = _layer(name, axis)
  layer.build(shape)
  _randomize(layer, rng)
  x = tf.constant(rng.normal(1.0, 3.0, shape).astype(np.float32))
  _assert_agree(_forward_and_gradients(layer, x, "on"),
                _forward_and_gradients(layer, x, "off"))


@pytest.mark.parametrize("name", EVONORMS)
def test_fused_equals_composite_in_a_tf_function(name):
  rng = np.random.default_rng(1)
  layer = _layer(name)
  layer.build((4, 6, 6, 32))
  _randomize(layer, rng)
  x = tf.constant(rng.normal(0.0, 2.0, (4, 6, 6, 32)).astype(np.float32))
  run = {p: tf.function(lambda x, p=p: _forward_and_gradients(layer, x, p))
         for p in ("on", "off")}
  _assert_agree(run["on"](x), run["off"](x))
  ops = {op.type for op in run["on"].get_concrete_function(x).graph
         .get_operations()}
  assert any(t.startswith("EvoNormFused") for t in ops), ops


@pytest.mark.parametrize("name", EVONORMS)
def test_conditional_affine_on_the_fused_path(name):
  rng = np.random.default_rng(2)
  layer = _layer(name, center=False, scale=False)
  layer.build((4, 5, 5, 16))
  _randomize(layer, rng)
  x = tf.constant(rng.normal(0.5, 2.0, (4, 5, 5, 16)).astype(np.float32))
  gamma = tf.constant(rng.normal(1.0, 0.3, (4, 16)).astype(np.float32))
  beta = tf.constant(rng.normal(0.0, 0.3, (4, 16)).astype(np.float32))
  _assert_agree(
      _forward_and_gradients(layer, x, "on", gamma=gamma, beta=beta),
      _forward_and_gradients(layer, x, "off", gamma=gamma, beta=beta))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_s0"])
def test_low_precision_inputs(name, dtype):
  """float32 arithmetic on float16/bfloat16 inputs: both paths round the same
  float32 result, so they differ by at most one unit in the last place."""
  rng = np.random.default_rng(3)
  layer = _layer(name, dtype=f"mixed_{dtype}")
  x = tf.cast(rng.normal(0.5, 2.0, (4, 5, 5, 16)), dtype)
  layer.build(x.shape)
  got = _forward_and_gradients(layer, x, "on")
  want = _forward_and_gradients(layer, x, "off")
  assert got[0].dtype == want[0].dtype == dtype and got[1].dtype == dtype
  _assert_agree(got, want, rtol={"float16": 2e-3, "bfloat16": 1.6e-2}[dtype])


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_s0"])
def test_nonlinearity_false_and_batch_of_zero(name):
  rng = np.random.default_rng(4)
  layer = _layer(name, nonlinearity=False)
  x = tf.constant(rng.normal(size=(4, 3, 3, 16)).astype(np.float32))
  layer.build(x.shape)
  _assert_agree(_forward_and_gradients(layer, x, "on"),
                _forward_and_gradients(layer, x, "off"))
  # An empty batch (a replica with no examples) passes through both paths.
  layer = _layer(name)
  empty = tf.zeros((0, 3, 3, 16))
  with fused.forced("on"):
    assert layer(empty, training=True).shape == (0, 3, 3, 16)


def test_synchronized_b0_under_mirrored_strategy():
  devices = [f"/cpu:{i}" for i in range(NUM_LOGICAL_CPUS)]
  strategy = tf.distribute.MirroredStrategy(devices)
  with strategy.scope():
    layer = _layer("evonorm_b0", synchronized=True)
    layer.build((2, 4, 4, 8))
  x = np.random.default_rng(5).normal(size=(2 * NUM_LOGICAL_CPUS, 4, 4, 8))
  x = x.astype(np.float32)

  inputs = layer_helpers.split_over_replicas(strategy, x, 2)
  results = {}
  for path in ("on", "off"):

    @tf.function
    def run(x, path=path):
      def step(x):
        with fused.forced(path):
          with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.cos(y))
          return y, tape.gradient(loss, x)
      return strategy.run(step, args=(x,))

    y, g = run(inputs)
    results[path] = [np.concatenate([t.numpy() for t in y.values]),
                     np.concatenate([t.numpy() for t in g.values])]
  _assert_agree(results["on"], results["off"])


def test_no_fused_ops_under_xla_or_in_inference():
  layer = _layer("evonorm_b0")
  x = tf.random.normal((2, 4, 4, 8))
  layer.build(x.shape)

  def types(fn):
    return {op.type for op in fn.get_concrete_function(x).graph
            .get_operations()}

  def train(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=True)
    return tape.gradient(y, x)

  with fused.forced("auto"):
    assert any(t.startswith("EvoNormFused") for t in types(tf.function(train)))
    xla = tf.function(train, jit_compile=True)
    assert not any(t.startswith("EvoNormFused") for t in types(xla))
    inference = tf.function(lambda x: layer(x, training=False))
    assert not any(t.startswith("EvoNormFused") for t in types(inference))
    xla(x)  # and it runs
  with fused.forced("off"):
    assert not any(t.startswith("EvoNormFused")
                   for t in types(tf.function(train)))


def test_mode_switch_errors():
  with pytest.raises(ValueError, match="auto, on, off"):
    fused.set_mode("fast")
  env = dict(os.environ, EVONORM_FUSED="fast")
  result = subprocess.run(
      [sys.executable, "-c", "from evonorm_layers import fused; fused.mode()"],
      env=env, capture_output=True, text=True, cwd=REPO, check=False)
  assert "EVONORM_FUSED='fast' is not a mode" in result.stderr


def _run_python(code, env, cwd):
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                        env=env, capture_output=True, text=True, cwd=cwd,
                        check=False, timeout=600)


def test_without_a_compiler_the_layers_fall_back_with_one_warning(tmp_path):
  env = dict(os.environ, CXX="no-such-compiler",
             EVONORM_KERNEL_CACHE=str(tmp_path / "cache"),
             PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
  result = _run_python("""
      import tensorflow as tf
      import evonorm_layers
      layer = evonorm_layers.get_norm_activation("evonorm_s0", groups=4)
      x = tf.random.normal((2, 4, 4, 8))
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
      assert tf.reduce_all(tf.math.is_finite(tape.gradient(y, x)))
      layer(x, training=True)  # no second warning
      from evonorm_layers import fused
      try:
        with fused.forced("on"):
          layer(x, training=True)
      except RuntimeError as e:
        print("on:", e)
      """, env, tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  warnings = [l for l in result.stderr.splitlines()
              if "fused CPU kernels unavailable" in l]
  assert len(warnings) == 1, result.stderr[-2000:]
  assert "no C++ compiler (no-such-compiler)" in warnings[0]
  assert "EVONORM_FUSED=on but the fused CPU kernels cannot be built" in (
      result.stdout)


@pytest.mark.heavy
def test_parallel_builds_compile_once(tmp_path):
  """Two processes building into an empty cache: one compiles, the other
  waits on the lock and loads the same library."""
  log = tmp_path / "compiles.log"
  wrapper = tmp_path / "cxx"
  wrapper.write_text(f"#!/bin/sh\ncase \"$1\" in --version) ;; *) echo x >> "
                     f"{log};; esac\nexec g++ \"$@\"\n")
  wrapper.chmod(0o755)
  env = dict(os.environ, CXX=str(wrapper),
             EVONORM_KERNEL_CACHE=str(tmp_path / "cache"),
             PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
  code = ("from evonorm_layers import fused; print(fused.build()); "
          "assert fused.available()")
  processes = [subprocess.Popen([sys.executable, "-c", code], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=tmp_path) for _ in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-2000:]
  assert outputs[0][0] == outputs[1][0]
  assert log.read_text().count("x") == 1
  assert [f.suffix for f in (tmp_path / "cache").iterdir()
          if f.suffix == ".so"] == [".so"]
