"""Float32 moments shared by every layer: instance, group and batch statistics.

One pass over the big activation tensor computes the per-(sample, channel)
mean and variance over the instance axes (two-pass ``tf.nn.moments``, so no
``E[x^2] - E[x]^2`` cancellation). Group, layer and batch statistics are then
derived from those small ``[N, C]`` statistics with the law of total variance,
which is exact because every (sample, channel) slice holds the same number of
elements:

    var(union) = mean(var_i) + mean((mean_i - mean(mean_i))**2)

All variances are population (biased) variances, as in the paper. Every
statistic is float32 whatever the input's dtype (float16 squares overflow
above 256), and element counts are int64 before they become floats, so
tensors of more than 2**31 elements are counted correctly.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from evonorm_layers import recompute
from evonorm_layers.layout import TensorLayout


class BatchMoments(NamedTuple):
  """Per-channel batch statistics, ``[1] + param_shape`` each, and the number
  of samples (float32 scalar) they were computed from."""
  mean: tf.Tensor
  variance: tf.Tensor
  count: tf.Tensor


def element_count(shape: tf.Tensor, axes: tuple[int, ...]) -> tf.Tensor:
  """The number of elements over ``axes`` of a tensor of ``shape``, as int64.

  ``tf.size`` and ``tf.shape`` count in int32 by default, which wraps around
  for tensors of 2**31 elements or more.
  """
  shape = tf.cast(shape, tf.int64)
  return tf.reduce_prod(tf.gather(shape, list(axes)))


def instance_moments(x: tf.Tensor, layout: TensorLayout):
  """Mean and variance of ``x`` over the instance axes, per sample and channel.

  Returns two float32 tensors of shape ``layout.stat_shape`` (keepdims). For
  rank-2 inputs there are no instance axes: the mean is ``x`` and the
  variance 0.
  """
  if not layout.instance_axes:
    x = tf.cast(x, tf.float32)
    return x, tf.zeros_like(x)
  return moments(x, layout.instance_axes)


def moments(x: tf.Tensor, axes: tuple[int, ...]):
  """Float32 ``tf.nn.moments(x, axes, keepdims=True)`` with a two-op gradient.

  The gradient ``dx = dmean / n + 2 dvar (x - mean) / n`` is computed as
  ``x * c1 + c0`` with small per-statistic ``c1, c0``: two passes over the
  activation instead of autodiff's five, and only ``x`` (in its own dtype)
  is kept for it. The gradient is itself differentiable and equals plain
  autodiff of the two-pass formula at second order (unlike
  ``tf.nn.moments``, which stops the gradient of the mean inside the
  variance).
  """

  @tf.custom_gradient
  def _moments(x):
    mean, var = tf.nn.moments(tf.cast(x, tf.float32), axes=axes,
                              keepdims=True)

    def grad(dmean, dvar):
      count = tf.cast(element_count(tf.shape(x, out_type=tf.int64), axes),
                      tf.float32)
      c1 = (2.0 / count) * dvar
      c0 = dmean / count - c1 * mean
      if x.dtype == tf.float32:
        return x * c1 + c0
      # A fresh float32 copy, not the forward pass's (which would then be
      # kept alive until here).
      (x_again,) = recompute.after(dvar, [x])
      return tf.cast(tf.cast(x_again, tf.float32) * c1 + c0, x.dtype)

    return (mean, var), grad

  return _moments(x)


def group_moments(mean: tf.Tensor, var: tf.Tensor, layout: TensorLayout,
                  groups: int):
  """Statistics over the instance axes and the channels of each group.

  Args:
    mean, var: instance moments from :func:`instance_moments`.
    layout: the input's layout (its ``channels`` may be -1: unknown until
      run, as in a function traced for any channel count).
    groups: number of contiguous channel groups (must divide ``C``).

  Returns:
    Group mean and variance, broadcast back to one value per (sample,
    channel), with shape ``layout.stat_shape`` (``mean``'s when the
    channels are unknown).
  """
  if layout.channels < 0:
    grouped = tf.stack([tf.shape(mean)[0], groups, -1])
    stat_shape = tf.shape(mean)
  else:
    grouped = [-1, groups, layout.channels // groups]
    stat_shape = layout.stat_shape
  m = tf.reshape(mean, grouped)
  v = tf.reshape(var, grouped)
  group_mean = tf.reduce_mean(m, axis=2, keepdims=True)
  group_var = (tf.reduce_mean(v, axis=2, keepdims=True) +
               tf.reduce_mean(tf.math.squared_difference(m, group_mean),
                              axis=2, keepdims=True))
  if layout.channels < 0:
    full = tf.shape(m)

    def per_channel(t):
      return tf.reshape(tf.broadcast_to(t, full), stat_shape)
  else:
    # Broadcast by a product with static ones: no shape computed at run
    # time, so exported and TFLite graphs keep static shapes (a dynamic
    # BroadcastTo splits TFLite's XNNPack delegation).
    ones = tf.ones([1, 1, layout.channels // groups], tf.float32)

    def per_channel(t):
      return tf.reshape(t * ones, stat_shape)

  return per_channel(group_mean), per_channel(group_var)


def batch_moments(mean: tf.Tensor, var: tf.Tensor, *,
                  synchronized: bool) -> BatchMoments:
  """Per-channel mean and variance over the batch and instance axes.

  Args:
    mean, var: instance moments from :func:`instance_moments`.
    synchronized: aggregate over all replicas of the current
      ``tf.distribute`` strategy with a single ``all_reduce`` (tf_keras'
      synchronized BatchNormalization uses three): each replica sends its
      element count and the sums of ``x`` and ``x**2`` over its batch (from
      exact two-pass local moments), so uneven per-replica batches are
      weighted correctly, and the global variance is ``E[x^2] - E[x]^2``
      clipped at 0 (float32; as tf_keras and Flax, this loses precision only
      when ``|mean| >> std``). Communication is ``2C + 1`` floats per call.
      Outside a replica context, or with one replica, statistics are local.

  Returns:
    ``BatchMoments``: mean and variance with shape ``[1] + param_shape``
    (keepdims), and the number of samples (over all replicas when
    aggregated). A batch without samples (an empty replica at the end of an
    uneven dataset) has mean and variance 0 instead of 0/0, so that nothing
    computed from them is NaN (its outputs are empty anyway); callers must
    not fold them into moving statistics.
  """
  batch_mean = tf.reduce_mean(mean, axis=0, keepdims=True)
  batch_var = (tf.reduce_mean(var, axis=0, keepdims=True) +
               tf.reduce_mean(tf.math.squared_difference(mean, batch_mean),
                              axis=0, keepdims=True))
  count = tf.cast(tf.shape(mean, out_type=tf.int64)[0], tf.float32)
  ctx = tf.distribute.get_replica_context()
  if synchronized and ctx is not None and ctx.num_replicas_in_sync > 1:
    batch_mean, batch_var, count = _cross_replica_moments(
        batch_mean, batch_var, count, ctx)
  has_samples = tf.greater(count, 0)
  return BatchMoments(
      tf.where(has_samples, batch_mean, tf.zeros_like(batch_mean)),
      tf.where(has_samples, batch_var, tf.zeros_like(batch_var)), count)


def _cross_replica_moments(local_mean, local_var, count, ctx):
  """Global moments and sample count from each replica's exact local
  moments, with one all-reduce."""
  flat_mean = tf.reshape(local_mean, [-1])
  channels = tf.shape(flat_mean)[0]
  sums = tf.concat([
      count[None], count * flat_mean,
      count * (tf.reshape(local_var, [-1]) + tf.square(flat_mean))
  ], axis=0)
  # An empty replica (uneven last batch) contributes zeros, not NaNs.
  sums = tf.where(count > 0, sums, tf.zeros_like(sums))
  total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums)
  n = total[0]
  global_mean = total[1:1 + channels] / n
  global_var = tf.nn.relu(total[1 + channels:] / n - tf.square(global_mean))
  shape = tf.shape(local_mean)
  return tf.reshape(global_mean, shape), tf.reshape(global_var, shape), n


def signed_sqrt(x: tf.Tensor, epsilon: float) -> tf.Tensor:
  """The search space's Sqrt primitive: ``sign(x) * sqrt(|x| + epsilon)``.

  Epsilon keeps the gradient finite at 0; the sign makes it defined for
  negative inputs (Table 2 of the paper).
  """
  return tf.sign(x) * tf.sqrt(tf.abs(x) + epsilon)

