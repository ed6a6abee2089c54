"""The rejection protocols of the search (Section 4.2 of the paper): the
probe, and the stability test's gradient ascent.

* **probe**: the compiled layer on a fixed random batch; Inf/NaN rejects.
  Its outputs, rounded, are the candidate's functional fingerprint: two
  candidates that compute the same function share one evaluation.
* **stability**, per anchor: gradient ascent on the weights towards a
  larger gradient norm ``||dL/dtheta||``, up to ``stability_steps`` steps;
  a norm above ``stability_threshold`` (or Inf/NaN) rejects. Its direction
  is exact (second order) or a finite difference of two gradients
  (``config.stability_direction``; see :func:`make_ascent_step`).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import tensorflow as tf
import tf_keras
# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.ops import gen_training_ops
# pylint: enable=g-direct-tensorflow-import

from evonorm_layers.search import proxy_config
from evonorm_layers.search import proxy_data
from evonorm_layers.search.graph import LayerGraph
from evonorm_layers.search.layer import SearchedNormActivation


PROBE_SHAPE = (8, 4, 4, 16)


class Rejected(Exception):
  """A protocol rejected the candidate."""

  def __init__(self, reason: str, detail: dict):
    super().__init__(reason)
    self.reason = reason
    self.detail = detail


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


def classification_loss(model, x, y, training=True):
  logits = model(x, training=training)
  loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=y, logits=logits))
  return loss + tf.add_n(model.losses) if model.losses else loss


# The finite-difference direction's step: the weights move by this fraction
# of their norm along the gradient. Measured against the exact direction
# (EvoNorm-S0 ResNet, cosine per weight): median 0.999 at 1e-3 (worst
# 0.87), 0.99999 at 1e-4 (worst 0.9999); float32 still resolves 3e-5.
DIFFERENCE_STEP = 1e-4


def batch_signature(split):
  """The input signature of a function of ``(images, labels)`` batches of
  ``split`` (from ``proxy_data.batches``), any batch size: traced once."""
  images, labels = split
  return [tf.TensorSpec([None, *images.shape[1:]], tf.float32),
          tf.TensorSpec([None], tf.as_dtype(labels.dtype))]


def make_gradients(model: tf_keras.Model, data: proxy_data.ProxyData):
  """``(x, y) -> (loss, gradients)`` for ``model.trainable_variables`` (zeros
  where a weight does not reach the loss), traced once for any batch size:
  the training step and the finite-difference stability step share it."""
  variables = model.trainable_variables

  @tf.function(autograph=False, input_signature=batch_signature(data.train))
  def gradients(x, y):
    with tf.GradientTape() as tape:
      loss = classification_loss(model, x, y)
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


def make_ascent_step(model: tf_keras.Model, data: proxy_data.ProxyData,
                     config: proxy_config.ProxyConfig, gradients=None):
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
  x, y = map(tf.constant, next(proxy_data.batches(
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
        loss = classification_loss(model, x, y)
      grads = [g for g in inner.gradient(loss, variables) if g is not None]
      norm = tf.linalg.global_norm(grads)
    _move_along(variables, outer.gradient(norm, variables), step_size)
    return norm

  return ascend


def stability_test(model: tf_keras.Model, data: proxy_data.ProxyData,
                   config: proxy_config.ProxyConfig, ascend=None) -> dict:
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
