"""Proxy training: SGD with momentum and a cosine learning rate, every
step traced once, Inf/NaN rejected (never a crash)."""

from __future__ import annotations

import math

import tensorflow as tf
# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.ops import gen_training_ops
# pylint: enable=g-direct-tensorflow-import

from evonorm_layers.search import protocols
from evonorm_layers.search import proxy_config
from evonorm_layers.search import proxy_data
from evonorm_layers.search.protocols import Rejected


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


def cosine_learning_rate(config: proxy_config.ProxyConfig, step: int) -> float:
  """Cosine decay from ``config.learning_rate`` to 0 over
  ``config.train_steps`` (tf_keras' ``CosineDecay``)."""
  done = min(step, config.train_steps) / config.train_steps
  return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * done))


class ProxyTrainer:
  """SGD with momentum and cosine decay over ``config.train_steps``, with
  the gradient and the evaluation traced once per model (the update eager,
  see :func:`_momentum_step`); :meth:`reset` starts a new run on the same
  traced functions."""

  def __init__(self, model, data: proxy_data.ProxyData,
               config: proxy_config.ProxyConfig):
    self.model, self.data, self.config = model, data, config
    self.steps_done = 0
    # (Keras gathers trainable_variables from every layer at each access.)
    self.variables = model.trainable_variables
    self.velocities = [tf.Variable(tf.zeros_like(v), trainable=False)
                       for v in self.variables]
    self.iterator = proxy_data.batches(data.train, config.batch_size,
                                    config.seed)

    # (No AutoGraph: the layers have no data-dependent Python control flow,
    # and converting them costs a third of the tracing.)
    self.gradients = protocols.make_gradients(model, data)

    # (The last evaluation batch is smaller: one trace for any size.)
    @tf.function(autograph=False, input_signature=protocols.batch_signature(
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
    self.iterator = proxy_data.batches(self.data.train, self.config.batch_size,
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
    for x, y in proxy_data.batches((images[:n], labels[:n]), 250,
                                self.config.seed, repeat=False):
      hits, finite = self._correct(x, y)
      if not bool(finite):
        raise Rejected("nan", {"stage": "evaluation"})
      correct += int(hits)
    return correct / n
