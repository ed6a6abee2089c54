"""Recomputation in the backward pass that stays differentiable to any order.

The elementwise parts of EvoNorm-B/S (and the SiLU of BN/GN-SiLU) are not
stored for backprop: only their input and small per-channel or per-(sample,
channel) tensors are kept, and the elementwise function is evaluated again
when the gradient is needed, so a norm site costs the memory of BatchNorm.

``tf.recompute_grad`` does this for first derivatives only: its gradient is
itself wrapped in a custom gradient that raises ``NotImplementedError``, so a
gradient of a gradient (GAN gradient penalties, the search's stability
protocol, gradient-norm regularizers) crashes. :func:`recompute_grad` here
computes the gradient by plain autodiff of the recomputed function, so any
outer tape differentiates it again exactly as it would differentiate the
function itself.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import tensorflow as tf
# TensorFlow has no public way to pause every tape (tf.recompute_grad uses
# the same internal context manager).
from tensorflow.python.eager import record  # pylint: disable=g-direct-tensorflow-import


def after(upstream: tf.Tensor, tensors: Sequence[tf.Tensor]) -> list:
  """``tensors`` with a data dependency on ``upstream``, values unchanged.

  In a graph, a recomputation that depends only on forward-pass tensors can
  be scheduled early, or merged with the identical forward computation by
  Grappler's common-subexpression elimination, which brings back the memory
  it was meant to save. Adding a zero that is computed from the incoming
  gradient prevents both. The zero is exact for every value of ``upstream``
  (NaN and Inf included) and passes no gradient to it. Eagerly, ops run in
  order and nothing is merged: the tensors are only given new identities.
  """
  if tf.executing_eagerly():
    # Distinct tensors even where two arguments are one tensor, so that a
    # tape gives each its own gradient.
    return [tf.identity(t) for t in tensors]
  first = tf.reduce_max(tf.reshape(upstream, [-1])[:1])  # -inf when empty
  flag = tf.cast(first, tf.bool)
  zero = tf.where(tf.equal(flag, flag), 0.0, float("nan"))
  return [t + tf.cast(zero, t.dtype) for t in tensors]


def recompute_grad(fn: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
  """``fn(*tensors)`` whose intermediates are recomputed in the backward pass.

  ``fn`` must take tensors only (no variables captured: pass them as
  arguments) and return one tensor. The gradient is plain autodiff of a
  second evaluation of ``fn``, recorded by any enclosing tape, so second and
  higher derivatives equal those of ``fn`` itself.
  """

  @functools.wraps(fn)
  def wrapper(*args):

    @tf.custom_gradient
    def recomputed(*args):
      # Not recorded by outer tapes: the custom gradient stands for it, and
      # in eager mode recording would keep its intermediates alive.
      with record.stop_recording():
        y = fn(*args)

      def grad(dy):
        inputs = after(dy, args)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
          tape.watch(inputs)
          y_again = fn(*inputs)
        return tape.gradient(y_again, inputs, output_gradients=dy,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)

      return y, grad

    return recomputed(*args)

  return wrapper


def elementwise(fn: Callable[..., tf.Tensor], x: tf.Tensor,
                *small: tf.Tensor) -> tf.Tensor:
  """Runs the elementwise part ``fn(x32, *small)`` of a layer.

  ``x`` stays in its own dtype (the compute dtype under mixed precision) and
  is the only large tensor kept for backprop; ``fn`` computes in float32 on a
  float32 copy of it, and the result comes back in ``x``'s dtype. ``small``
  are float32 tensors that broadcast against ``x`` (statistics, per-channel
  or per-sample parameters).
  """

  def run(x, *small):
    y = fn(tf.cast(x, tf.float32), *small)
    return tf.cast(y, x.dtype)

  return recompute_grad(run)(x, *small)


def float32_elementwise(fn: Callable[..., tf.Tensor], x: tf.Tensor,
                        *small: tf.Tensor) -> tf.Tensor:
  """``fn(x, *small)``, in float32 arithmetic whatever ``x``'s dtype.

  For a float32 ``x``, plain ops (autodiff keeps what it needs, as usual).
  For float16/bfloat16, :func:`elementwise`: the gradients of the small
  float32 arguments are reductions over the whole activation, which would
  overflow in float16 (65504) or lose most digits in bfloat16; here they are
  computed in float32, and only ``x`` is kept for backprop.
  """
  if x.dtype == tf.float32:
    return fn(x, *small)
  return elementwise(fn, x, *small)
