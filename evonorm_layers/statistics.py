"""Float32 moments shared by every layer: instance, group and batch statistics.

One pass over the big activation tensor computes the per-(sample, channel)
mean and variance over the instance axes (two-pass ``tf.nn.moments``, so no
``E[x^2] - E[x]^2`` cancellation). Group, layer and batch statistics are then
derived from those small ``[N, C]`` statistics with the law of total variance,
which is exact because every (sample, channel) slice holds the same number of
elements:

    var(union) = mean(var_i) + mean((mean_i - mean(mean_i))**2)

All variances are population (biased) variances, as in the paper.
"""

from __future__ import annotations

import tensorflow as tf

from evonorm_layers.layout import TensorLayout


def instance_moments(x: tf.Tensor, layout: TensorLayout):
  """Mean and variance of ``x`` over the instance axes, per sample and channel.

  Returns two tensors of shape ``layout.stat_shape`` (keepdims). For rank-2
  inputs there are no instance axes: the mean is ``x`` and the variance 0.
  """
  if not layout.instance_axes:
    return x, tf.zeros_like(x)
  return moments(x, layout.instance_axes)


def moments(x: tf.Tensor, axes: tuple[int, ...]):
  """``tf.nn.moments(x, axes, keepdims=True)`` with a two-op gradient.

  The gradient ``dx = dmean / n + 2 dvar (x - mean) / n`` is computed as
  ``x * c1 + c0`` with small per-statistic ``c1, c0``: two passes over the
  activation instead of autodiff's five, and only ``x`` is kept for it.
  """

  @tf.custom_gradient
  def _moments(x):
    mean, var = tf.nn.moments(x, axes=axes, keepdims=True)

    def grad(dmean, dvar):
      count = tf.cast(tf.size(x) // tf.size(mean), x.dtype)
      c1 = (2.0 / count) * dvar
      return x * c1 + (dmean / count - c1 * mean)

    return (mean, var), grad

  return _moments(x)


def group_moments(mean: tf.Tensor, var: tf.Tensor, layout: TensorLayout,
                  groups: int):
  """Statistics over the instance axes and the channels of each group.

  Args:
    mean, var: instance moments from :func:`instance_moments`.
    layout: the input's layout.
    groups: number of contiguous channel groups (must divide ``C``).

  Returns:
    Group mean and variance, broadcast back to one value per (sample,
    channel), with shape ``layout.stat_shape``.
  """
  channels = layout.channels
  grouped = [-1, groups, channels // groups]
  m = tf.reshape(mean, grouped)
  v = tf.reshape(var, grouped)
  group_mean = tf.reduce_mean(m, axis=2, keepdims=True)
  group_var = (tf.reduce_mean(v, axis=2, keepdims=True) +
               tf.reduce_mean(tf.math.squared_difference(m, group_mean),
                              axis=2, keepdims=True))
  full = tf.shape(m)

  def per_channel(t):
    return tf.reshape(tf.broadcast_to(t, full), layout.stat_shape)

  return per_channel(group_mean), per_channel(group_var)


def batch_moments(mean: tf.Tensor, var: tf.Tensor, *, synchronized: bool):
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
    Mean and variance with shape ``[1] + param_shape`` (keepdims).
  """
  batch_mean = tf.reduce_mean(mean, axis=0, keepdims=True)
  batch_var = (tf.reduce_mean(var, axis=0, keepdims=True) +
               tf.reduce_mean(tf.math.squared_difference(mean, batch_mean),
                              axis=0, keepdims=True))
  ctx = tf.distribute.get_replica_context()
  if not synchronized or ctx is None or ctx.num_replicas_in_sync == 1:
    return batch_mean, batch_var
  count = tf.cast(tf.shape(mean)[0], tf.float32)
  return _cross_replica_moments(batch_mean, batch_var, count, ctx)


def _cross_replica_moments(local_mean, local_var, count, ctx):
  """Global moments from each replica's exact local ones, one all-reduce."""
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
  return tf.reshape(global_mean, shape), tf.reshape(global_var, shape)


def signed_sqrt(x: tf.Tensor, epsilon: float) -> tf.Tensor:
  """The search space's Sqrt primitive: ``sign(x) * sqrt(|x| + epsilon)``.

  Epsilon keeps the gradient finite at 0; the sign makes it defined for
  negative inputs (Table 2 of the paper).
  """
  return tf.sign(x) * tf.sqrt(tf.abs(x) + epsilon)

