"""Scoring one candidate: the rejection protocols, then proxy training.

Each step cheaper than the next, a candidate is rejected at the first
failure (Section 4.2 of the paper):

1. **probe**: the compiled layer on a fixed random batch; Inf/NaN rejects.
   Its outputs, rounded, are the candidate's functional fingerprint: two
   candidates that compute the same function share one evaluation.
2. **stability**, per anchor: gradient ascent on the weights towards a
   larger gradient norm ``||dL/dtheta||``, up to ``stability_steps`` steps;
   a norm above ``stability_threshold`` (or Inf/NaN) rejects. Its direction
   is exact (second order) or a finite difference of two gradients
   (``config.stability_direction``; see :func:`make_ascent_step`).
3. **quality**, per anchor: ``quality_steps`` training steps; validation
   accuracy below ``quality_threshold`` on any anchor rejects.
4. **training**: the survivors train on to ``train_steps``; their validation
   accuracy per anchor is the fitness.

Stability and quality run anchor by anchor (the first anchor's stability
and quality tests, then the second's, ...): of the candidates a laptop
search tested for stability, 95% of the unstable ones failed on the first
anchor, and a candidate that fails the quality test there is not tested
further. A candidate that produces Inf or NaN anywhere is rejected and
recorded, never a crash; every step's wall time is recorded.

Where the stages run (``PATHS``; ``bench/search_throughput.py`` measures
each): the first anchor's stability test, which most candidates fail within
a few steps, on an ``AnchorSession`` (each anchor built with
``program.ProgramNormActivation`` and its steps traced once per worker; a
candidate only loads its graph into the layers' variables and resets the
weights); everything after it on models compiled for the candidate
(``CompiledAnchor``), whose steps run about 3x faster than the
interpreter's, from the sessions' initial weights: the other anchors'
stability tests run there too, on the gradient their training then reuses.
Their layers call one function per graph and signature traced for all of
the candidate's anchors (``layer.SharedTraces``), and what TensorFlow
registered for them globally is dropped with them
(:func:`forget_custom_gradients`). ``"sessions"`` and ``"compiled"`` run
every stage one way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras
# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import gen_training_ops
# pylint: enable=g-direct-tensorflow-import

from evonorm_layers import base
from evonorm_layers.search import known_layers
from evonorm_layers.search import program
from evonorm_layers.search import proxies
from evonorm_layers.search.graph import LayerGraph
from evonorm_layers.search.layer import SearchedNormActivation
from evonorm_layers.search.layer import SharedTraces

PROBE_SHAPE = (8, 4, 4, 16)
# Where the stages run: see evaluate().
PATHS = ("hybrid", "sessions", "compiled")


class Rejected(Exception):
  """A protocol rejected the candidate."""

  def __init__(self, reason: str, detail: dict):
    super().__init__(reason)
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass
class Timer:
  seconds: dict = dataclasses.field(default_factory=dict)

  def __call__(self, name):
    timer = self

    class _Span:

      def __enter__(self):
        self.start = time.perf_counter()

      def __exit__(self, *exc):
        timer.seconds[name] = timer.seconds.get(name, 0.0) + (
            time.perf_counter() - self.start)

    return _Span()


def searched_norm_maker(graph: LayerGraph, config: proxies.ProxyConfig,
                 shared_traces: SharedTraces | None = None):
  """Makes the candidate's layers; with ``shared_traces`` (one for all
  anchors of an evaluation) they call functions traced once
  (``layer.SharedTraces``)."""
  def make_norm(nonlinearity: bool = True):
    return SearchedNormActivation(graph, groups=config.groups,
                                  momentum=config.momentum,
                                  nonlinearity=nonlinearity,
                                  shared_traces=shared_traces)
  return make_norm


def probe(graph: LayerGraph) -> str:
  """Functional fingerprint of the layer; raises Rejected on Inf/NaN.

  A layer whose output does not depend on its input cannot learn anything:
  the quality protocol would reject it after training, so it is rejected
  here, on its outputs: they are the same for two different input batches
  (``x*0``, ``x + (-x)``, ``max(x, x) / x``), in training and in inference.
  A graph that does not even read ``x`` is rejected without running it.

  A layer that does not normalize (no mean, moment or variance of ``x``
  reaches its output: ``max(x, 0)``, ``tanh(x)``) is rejected here too: it
  is an activation function, and the paper's bad layers include those that
  do not normalize. The unbounded ones also fail the stability test, but a
  bounded one (``tanh(x)``) passes it, and the laptop proxy's quality test
  accepted it (average accuracy 0.63-0.69 against BN-ReLU's 0.82).
  """
  rejection = Rejected("quality", {"stage": "probe",
                                   "detail": "the output does not depend on x"})
  if not graph.uses("x"):
    raise rejection
  rng = np.random.default_rng(1234)
  x = tf.constant(rng.normal(0.3, 1.5, PROBE_SHAPE).astype(np.float32))
  other = tf.constant(rng.normal(-0.2, 0.8, PROBE_SHAPE).astype(np.float32))
  layer = SearchedNormActivation(graph, groups=4)
  outputs = [layer(x, training=True).numpy(), layer(x, training=False).numpy()]
  if not all(np.all(np.isfinite(o)) for o in outputs):
    raise Rejected("nan", {"stage": "probe"})
  others = [layer(other, training=True).numpy(),
            layer(other, training=False).numpy()]
  if all(np.all(np.isfinite(o)) for o in others) and all(
      np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(outputs,
                                                               others)):
    raise rejection
  if not graph.normalizes:
    raise Rejected("quality", {
        "stage": "probe", "detail": "it does not normalize (no statistic "
                                    "of x reaches the output)"})
  # float16 keeps ~3 significant digits: equal functions agree far closer
  # (an unlucky rounding only costs a second evaluation).
  rounded = np.concatenate([o.ravel() for o in outputs]).astype(np.float16)
  return hashlib.sha256(rounded.tobytes()).hexdigest()[:16]


def _loss(model, x, y, training=True):
  logits = model(x, training=training)
  loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=y, logits=logits))
  return loss + tf.add_n(model.losses) if model.losses else loss


# The finite-difference direction's step: the weights move by this fraction
# of their norm along the gradient. Measured against the exact direction
# (EvoNorm-S0 ResNet, cosine per weight): median 0.999 at 1e-3 (worst
# 0.87), 0.99999 at 1e-4 (worst 0.9999); float32 still resolves 3e-5.
DIFFERENCE_STEP = 1e-4


def _batch_signature(split):
  """The input signature of a function of ``(images, labels)`` batches of
  ``split`` (from ``proxies.batches``), any batch size: traced once."""
  images, labels = split
  return [tf.TensorSpec([None, *images.shape[1:]], tf.float32),
          tf.TensorSpec([None], tf.as_dtype(labels.dtype))]


def make_gradients(model: tf_keras.Model, data: proxies.ProxyData):
  """``(x, y) -> (loss, gradients)`` for ``model.trainable_variables`` (zeros
  where a weight does not reach the loss), traced once for any batch size:
  the training step and the finite-difference stability step share it."""
  variables = model.trainable_variables

  @tf.function(autograph=False, input_signature=_batch_signature(data.train))
  def gradients(x, y):
    with tf.GradientTape() as tape:
      loss = _loss(model, x, y)
    return loss, tape.gradient(
        loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)

  return gradients


def _offset(variables, h, grads):
  """``variable += h * grad``, one fused op per variable, run eagerly (as
  :func:`_momentum_step`, whose reasons apply)."""
  alpha = tf.constant(-h, tf.float32)
  for variable, grad in zip(variables, grads):
    gen_training_ops.resource_apply_gradient_descent(variable.handle, alpha,
                                                     grad)


@tf.function(autograph=False)
def _move_along(variables, directions, step_size):
  """Each variable moves by ``step_size`` times its norm along its
  (normalized) part of the ascent direction (module-level, variables as
  arguments: traced once per process and weight shapes, not per model)."""
  for variable, direction in zip(variables, directions):
    if direction is not None:
      step = step_size * (tf.norm(variable) + 1e-3)
      variable.assign_add(step * tf.math.divide_no_nan(
          direction, tf.norm(direction)))


def make_ascent_step(model: tf_keras.Model, data: proxies.ProxyData,
                     config: proxies.ProxyConfig, gradients=None):
  """The stability protocol's step for ``model``: one step of gradient
  ascent on the weights towards a larger ``||g||``, ``g = dL/dtheta`` (each
  variable moves by ``stability_step_size`` times its norm along its part
  of ``d||g||/dtheta = H g / ||g||``); returns ``||g||`` before the step.

  ``config.stability_direction`` says how ``H g`` is computed: ``"exact"``
  differentiates ``||g||`` (a second-order graph traced for the model, the
  paper's definition); ``"finite_difference"`` takes ``g(theta + h g) -
  g(theta)`` from two first-order gradients (``gradients``, from
  :func:`make_gradients`; the training step's), with ``h`` moving the
  weights by ``DIFFERENCE_STEP`` of their norm: nothing to trace for the
  model beyond its training gradient, and each step costs two gradients
  instead of a second-order pass.
  """
  x, y = map(tf.constant, next(proxies.batches(
      data.train, config.stability_batch, config.seed)))
  variables = model.trainable_variables
  step_size = tf.constant(config.stability_step_size, tf.float32)

  if config.stability_direction == "finite_difference":
    gradients = gradients or make_gradients(model, data)

    # The gradients are called from Python, not from a traced step: one
    # traced function calling them twice was instantiated with their graph
    # inlined (first call 1.3-1.8 s per compiled model, measured).
    def ascend_by_difference():
      _, grads = gradients(x, y)
      norm = tf.linalg.global_norm(grads)
      h = float(DIFFERENCE_STEP * tf.linalg.global_norm(variables) / norm)
      if not math.isfinite(h):
        return norm
      _offset(variables, h, grads)
      _, shifted = gradients(x, y)
      _offset(variables, -h, grads)
      _move_along(variables, [a - b for a, b in zip(shifted, grads)],
                  step_size)
      return norm

    return ascend_by_difference

  @tf.function(autograph=False)
  def ascend():
    with tf.GradientTape() as outer:
      with tf.GradientTape() as inner:
        loss = _loss(model, x, y)
      grads = [g for g in inner.gradient(loss, variables) if g is not None]
      norm = tf.linalg.global_norm(grads)
    _move_along(variables, outer.gradient(norm, variables), step_size)
    return norm

  return ascend


def stability_test(model: tf_keras.Model, data: proxies.ProxyData,
                   config: proxies.ProxyConfig, ascend=None) -> dict:
  """Adversarial gradient-norm ascent; returns its record or raises.

  ``ascend``: the model's traced step from :func:`make_ascent_step` (made
  here if not given). The model's weights are left perturbed.
  """
  ascend = ascend or make_ascent_step(model, data, config)
  largest = 0.0
  for step in range(1, config.stability_steps + 1):
    norm = float(ascend())
    if not math.isfinite(norm) or norm > config.stability_threshold:
      raise Rejected("stability", {"steps": step, "grad_norm": norm})
    largest = max(largest, norm)
  return {"steps": config.stability_steps, "max_grad_norm": largest}


# The proxy's SGD momentum (the velocity's decay per step).
MOMENTUM = 0.9


def _momentum_step(variables, velocities, grads, learning_rate: float):
  """``velocity = MOMENTUM * velocity - learning_rate * grad; variable +=
  velocity`` (tf_keras' SGD with momentum, not Nesterov), one fused op per
  variable, run eagerly (through its generated wrapper: ``tf.raw_ops``
  dispatches at half the speed): 1-2 ms for a proxy's ~50 weights, where a
  ``tf.function`` taking the variables, velocities and gradients as
  arguments spent 4-5 ms per step handling them, and the update traced into
  the model's step added 0.3 s to every model's trace (measured).
  """
  learning_rate = tf.constant(learning_rate, tf.float32)
  momentum = tf.constant(MOMENTUM, tf.float32)
  for variable, velocity, grad in zip(variables, velocities, grads):
    gen_training_ops.resource_apply_keras_momentum(
        variable.handle, velocity.handle, learning_rate, grad, momentum)


def cosine_learning_rate(config: proxies.ProxyConfig, step: int) -> float:
  """Cosine decay from ``config.learning_rate`` to 0 over
  ``config.train_steps`` (tf_keras' ``CosineDecay``)."""
  done = min(step, config.train_steps) / config.train_steps
  return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * done))


class ProxyTrainer:
  """SGD with momentum and cosine decay over ``config.train_steps``, with
  the gradient and the evaluation traced once per model (the update eager,
  see :func:`_momentum_step`); :meth:`reset` starts a new run on the same
  traced functions."""

  def __init__(self, model, data: proxies.ProxyData,
               config: proxies.ProxyConfig):
    self.model, self.data, self.config = model, data, config
    self.steps_done = 0
    # (Keras gathers trainable_variables from every layer at each access.)
    self.variables = model.trainable_variables
    self.velocities = [tf.Variable(tf.zeros_like(v), trainable=False)
                       for v in self.variables]
    self.iterator = proxies.batches(data.train, config.batch_size,
                                    config.seed)

    # (No AutoGraph: the layers have no data-dependent Python control flow,
    # and converting them costs a third of the tracing.)
    self.gradients = make_gradients(model, data)

    # (The last evaluation batch is smaller: one trace for any size.)
    @tf.function(autograph=False, input_signature=_batch_signature(
        getattr(data, config.eval_split)))
    def correct(x, y):
      logits = model(x, training=False)
      return (tf.reduce_sum(tf.cast(tf.argmax(logits, -1) == y, tf.int32)),
              tf.reduce_all(tf.math.is_finite(logits)))

    self._correct = correct

  def _step(self, x, y):
    # Two calls, not one traced step calling the gradients: that would be
    # instantiated with their graph inlined (0.7 s per model).
    loss, grads = self.gradients(x, y)
    _momentum_step(self.variables, self.velocities, grads,
                   cosine_learning_rate(self.config, self.steps_done))
    return loss

  def reset(self):
    """Step 0 again: the velocities zeroed and the data restarted (the
    model's weights are the caller's)."""
    for velocity in self.velocities:
      velocity.assign(tf.zeros_like(velocity))
    # The same batches in the same order for every run.
    self.iterator = proxies.batches(self.data.train, self.config.batch_size,
                                    self.config.seed)
    self.steps_done = 0

  def train_until(self, steps: int):
    while self.steps_done < steps:
      loss = self._step(*next(self.iterator))
      self.steps_done += 1
      if self.steps_done % 20 == 0 or self.steps_done == steps:
        if not math.isfinite(float(loss)):
          raise Rejected("nan", {"stage": "training",
                                 "step": self.steps_done})

  def accuracy(self) -> float:
    images, labels = getattr(self.data, self.config.eval_split)
    n = min(self.config.eval_examples, len(labels))
    correct = 0
    for x, y in proxies.batches((images[:n], labels[:n]), 250,
                                self.config.seed, repeat=False):
      hits, finite = self._correct(x, y)
      if not bool(finite):
        raise Rejected("nan", {"stage": "evaluation"})
      correct += int(hits)
    return correct / n


def disable_graph_optimizations():
  """Turns Grappler off for this process (the search's workers, the
  calibration command).

  The interpreter's second-order graphs take Grappler about a minute per
  anchor to optimize (measured: the stability step 64 s with it, 9 s
  without) for no measurable gain per step; and it must stay off, because
  functions are instantiated again, and optimized again, when the options
  change.
  """
  tf.config.optimizer.set_experimental_options({"disable_meta_optimizer":
                                                True})


def _weights_outside_norm_layers(model) -> list[tf.Variable]:
  """The model's weights, in order, less its norm-activation layers'
  (which differ between interpreted and compiled layers)."""
  inside = {id(v) for layer in model.submodules
            if isinstance(layer, base.NormActivation) for v in layer.weights}
  return [v for v in model.weights if id(v) not in inside]


class AnchorSession:
  """One anchor, built and traced once, that evaluates any candidate.

  The anchor is built with ``ProgramNormActivation`` at every norm site;
  its training step, evaluation and stability step are traced on creation
  (the stage ``setup`` of :func:`evaluate`). :meth:`start` loads a candidate's graph and puts
  every weight and the optimizer back to their initial values, so each
  candidate trains from the same initialization, on the same batches, as
  a freshly built model would, without building or tracing anything.
  """

  WARM_UP = known_layers.KNOWN_GRAPHS["bn_relu"]

  def __init__(self, anchor: str, config: proxies.ProxyConfig,
               data: proxies.ProxyData):
    disable_graph_optimizations()
    self.anchor, self.config = anchor, config
    tf_keras.utils.set_random_seed(config.seed)

    def make_norm(nonlinearity: bool = True):
      return program.ProgramNormActivation(groups=config.groups,
                                           momentum=config.momentum,
                                           nonlinearity=nonlinearity)

    self.model = proxies.build_model(anchor, make_norm, config,
                                     data.num_classes)
    self.initial_weights = self.model.get_weights()
    self.initial_outside_norm = [
        w.numpy() for w in _weights_outside_norm_layers(self.model)]
    self.trainer = ProxyTrainer(self.model, data, config)
    self.ascend = (make_ascent_step(self.model, data, config,
                                    self.trainer.gradients)
                   if config.stability_steps else None)
    # Trace everything now, on a known layer, so candidates only run.
    self.start(self.WARM_UP)
    for run in (lambda: self.trainer.train_until(1), self.trainer.accuracy,
                self.ascend):
      if run is not None:
        run()

  def start(self, graph: LayerGraph):
    """Loads ``graph``; weights, statistics and optimizer to step 0."""
    self.model.set_weights(self.initial_weights)
    program.load_program(self.model, graph)
    self.trainer.reset()

  def stability(self, graph: LayerGraph) -> dict:
    self.start(graph)
    return stability_test(self.model, self.trainer.data, self.config,
                          self.ascend)


def check_anchors(config: proxies.ProxyConfig, data: proxies.ProxyData):
  """Builds each user anchor once with BN-ReLU at its norm sites and runs
  one stability step, so that a builder the search cannot use is a clear
  error before any work starts (e.g. an op without a second derivative,
  which the exact stability direction needs)."""
  for anchor in config.anchors:
    if ":" not in anchor:
      continue
    model = proxies.build_model(
        anchor, searched_norm_maker(known_layers.KNOWN_GRAPHS["bn_relu"], config),
        config, data.num_classes)
    if config.stability_steps:
      try:
        make_ascent_step(model, data, config)()
      except Exception as e:  # pylint: disable=broad-except
        # (TensorFlow's LookupError arrives wrapped in a StagingError.)
        missing = re.search(r"gradient registry has no entry for: (\w+)",
                            str(e))
        if not missing:
          raise
        op = missing.group(1)
        raise ValueError(
            f"Anchor {anchor!r} has an op without a second derivative ({op})"
            ", which the exact stability test differentiates: replace it "
            "(e.g. UpSampling2D by Conv2DTranspose), or pass "
            "--stability_direction=finite_difference (first derivatives "
            "only) or --stability_steps=0."
        ) from None
  tf_keras.backend.clear_session()


class CompiledAnchor:
  """A model built with the compiled ``SearchedNormActivation`` for one
  candidate, its steps traced for it: the stability test, then (from the
  same initial weights) the quality test and the training run on it. The
  hybrid path trains here; the compiled path runs every stage here (no
  interpreter) and is the throughput benchmark's baseline."""

  def __init__(self, anchor: str, config: proxies.ProxyConfig,
               data: proxies.ProxyData, initial: list | None = None,
               shared_traces: SharedTraces | None = None):
    """``initial``: the weights outside norm-activation layers to start
    from (``AnchorSession.initial_outside_norm``), instead of seeding.
    ``shared_traces``: the candidate's traced layer functions, shared by
    its anchors (``layer.SharedTraces``; by default the anchor's own)."""
    self.anchor, self.config, self.data = anchor, config, data
    self.initial = initial
    self.shared_traces = shared_traces or SharedTraces()
    self.trainer = self.graph = self.initial_weights = None

  def _model(self, graph):
    if self.initial is None:
      tf_keras.backend.clear_session()
      tf_keras.utils.set_random_seed(self.config.seed)
    model = proxies.build_model(
        self.anchor, searched_norm_maker(graph, self.config, self.shared_traces),
        self.config, self.data.num_classes)
    if self.initial is not None:
      # Seeding would clear TensorFlow's kernel cache, and every traced
      # function of the worker's sessions would be instantiated again
      # (seconds each): the session's initial weights are copied instead.
      weights = _weights_outside_norm_layers(model)
      if [tuple(w.shape) for w in weights] != [
          w.shape for w in self.initial]:
        raise ValueError(f"Anchor {self.anchor!r} builds different weights "
                         "each time; it cannot be evaluated on the hybrid "
                         "path (use --evaluation_path=compiled).")
      for variable, value in zip(weights, self.initial):
        variable.assign(value)
    return model

  def start(self, graph: LayerGraph):
    """The model for ``graph`` (built on first use) at its initial weights,
    the optimizer at step 0."""
    if self.graph is not graph:
      model = self._model(graph)
      self.graph, self.initial_weights = graph, model.get_weights()
      self.trainer = ProxyTrainer(model, self.data, self.config)
    else:
      self.trainer.model.set_weights(self.initial_weights)
      self.trainer.reset()

  def stability(self, graph: LayerGraph) -> dict:
    self.start(graph)
    ascend = make_ascent_step(self.trainer.model, self.data, self.config,
                              self.trainer.gradients)
    return stability_test(self.trainer.model, self.data, self.config, ascend)


def custom_gradient_names() -> set[str]:
  """The gradient functions registered by ``tf.custom_gradient`` so far.

  In a traced function every call of a ``tf.custom_gradient`` function (the
  library's moments, at every norm site) registers a gradient function in
  TensorFlow's process-wide gradient registry under a new name, and nothing
  ever removes it; the function's closure holds tensors of the traced
  graph, so the whole graph (and everything it captured) stays alive. A
  search worker traces a new model per fully evaluated candidate and
  anchor: it grew by ~50 MiB per model (measured: 16 evaluations of one
  anchor, 1066 to 1875 MiB) until :func:`forget_custom_gradients` dropped
  the names of models that are gone (then ~3.6 MiB per model).
  """
  return {name for name in _gradient_registry()
          if name.startswith("CustomGradient-")}


def _gradient_registry() -> dict:
  # (A private table of TensorFlow's; if a release moves it, nothing is
  # forgotten and tests/test_search_program.py sees the graphs outlive
  # their evaluation.)
  registry = getattr(tf_ops, "_gradient_registry", None)
  return getattr(registry, "_registry", {})


def forget_custom_gradients(names) -> None:
  """Unregisters gradient functions (names from
  :func:`custom_gradient_names`) of graphs that will never be
  differentiated again: their models and traced functions are gone."""
  registry = _gradient_registry()
  for name in names:
    registry.pop(name, None)


def evaluate(graph: LayerGraph, config: proxies.ProxyConfig,
             data: proxies.ProxyData,
             known_probes: frozenset[str] | set[str] = frozenset(),
             sessions: dict[str, AnchorSession] | None = None,
             path: str = "hybrid") -> dict[str, Any]:
  """Runs the protocols and the proxy training for one candidate.

  If the candidate's probe fingerprint is in ``known_probes`` it computes
  the same function as a layer already evaluated: the record is then just
  ``{"status": "cached", "probe": ...}``.

  ``path`` (one of ``PATHS``) says where each stage runs: ``"sessions"``
  runs all of them on ``AnchorSession``s; ``"compiled"`` on models built
  and traced for this candidate (``CompiledAnchor``); ``"hybrid"`` (the default) runs the first anchor's stability
  test, which most candidates fail within a few steps, on its session, and
  the rest on compiled models, whose steps run three times faster than the
  interpreter's. ``sessions`` (anchor -> ``AnchorSession``) are reused
  across calls: pass the same dict to evaluate many candidates; missing
  anchors are built and traced into it, and that time is recorded as the
  stage ``setup``.

  Returns a record: ``status`` ("accepted" or "rejected"), ``reason``,
  ``fitness`` (validation accuracy per anchor, accepted only), ``quality``
  (accuracy per anchor after ``quality_steps``), ``stability`` and
  ``seconds`` per stage (``probe``, ``setup``, ``stability``, ``quality``,
  ``training``, ``evaluation`` and ``total``).
  """
  timer = Timer()
  record: dict[str, Any] = {"quality": {}, "stability": {}, "fitness": {}}
  start = time.perf_counter()
  if path not in PATHS:
    raise ValueError(f"Unknown evaluation path {path!r}; use one of "
                     f"{', '.join(PATHS)}.")
  sessions = {} if sessions is None else sessions
  fresh: dict[str, CompiledAnchor] = {}
  traces = SharedTraces()  # the candidate's layer functions, all anchors
  # The models compiled for this candidate die with it; the sessions live on.
  registered_before, kept = custom_gradient_names(), set()

  def on_session(anchor, stage):
    if path == "hybrid":
      return stage == "stability" and anchor == config.anchors[0]
    return path == "sessions"

  def runner(anchor, stage):
    """Where ``stage`` runs for ``anchor``: its session or its model
    compiled for the candidate (built on first use)."""
    if not on_session(anchor, stage):
      if anchor not in fresh:
        # Hybrid: from the session's initial weights (without a stability
        # test, no sessions: seeded like "compiled").
        initial = (session(anchor).initial_outside_norm
                   if path == "hybrid" and config.stability_steps else None)
        fresh[anchor] = CompiledAnchor(anchor, config, data, initial,
                                       traces)
      return fresh[anchor]
    return session(anchor)

  def session(anchor):
    if anchor not in sessions:
      with timer("setup"):
        before = custom_gradient_names()
        sessions[anchor] = AnchorSession(anchor, config, data)
        kept.update(custom_gradient_names() - before)
    return sessions[anchor]

  try:
    with timer("probe"):
      record["probe"] = probe(graph)
    if record["probe"] in known_probes:
      return {"status": "cached", "probe": record["probe"]}
    # Anchor by anchor, the stability test, then the quality test.
    for anchor in config.anchors:
      if config.stability_steps:
        run = runner(anchor, "stability")
        with timer("stability"):
          record["stability"][anchor] = run.stability(graph)
      run = runner(anchor, "quality")
      with timer("quality"):
        run.start(graph)
        run.trainer.train_until(config.quality_steps)
      with timer("evaluation"):
        accuracy = record["quality"][anchor] = run.trainer.accuracy()
      if accuracy < config.quality_threshold:
        raise Rejected("quality", {"anchor": anchor, "accuracy": accuracy})
    for anchor in config.anchors:
      trainer = runner(anchor, "training").trainer
      with timer("training"):
        trainer.train_until(config.train_steps)
      with timer("evaluation"):
        record["fitness"][anchor] = trainer.accuracy()
    record.update(status="accepted", reason=None)
  except Rejected as rejection:
    record.update(status="rejected", reason=rejection.reason,
                  rejection=rejection.detail)
  except (tf.errors.InvalidArgumentError, FloatingPointError) as error:
    # e.g. a NaN caught by a numerics check inside TensorFlow.
    record.update(status="rejected", reason="nan",
                  rejection={"error": str(error).splitlines()[0][:200]})
  finally:
    forget_custom_gradients(custom_gradient_names() - registered_before -
                            kept)
  # A candidate's cost: what it ran, not the one-off setup of a session.
  timer.seconds["total"] = (time.perf_counter() - start -
                            timer.seconds.get("setup", 0.0))
  record["seconds"] = timer.seconds
  return record
