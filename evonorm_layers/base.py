"""Base classes shared by every normalization-activation layer.

Every layer has the same constructor shape, so any one can replace any other:

    Layer(axis=-1, epsilon=1e-5, nonlinearity=True, center=True, scale=True,
          gamma_initializer="ones", beta_initializer="zeros",
          **keras_layer_kwargs)

plus ``groups`` for grouped layers and ``momentum, synchronized`` for
batch-dependent ones, and the same call:
``layer(x, training=None, gamma=None, beta=None)`` (``gamma``/``beta``: the
conditional affine, see :mod:`evonorm_layers.affine`).

``__init__`` only validates and stores; ``build`` creates the float32
per-channel variables. Statistics are always computed in float32 (so
``mixed_float16`` / ``mixed_bfloat16`` squares never overflow). The input
stays in its dtype: under mixed precision the tensors kept for backprop are
in the compute dtype, and the elementwise parts compute in float32 on it
(:mod:`evonorm_layers.recompute`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import tensorflow as tf
import tf_keras

from evonorm_layers import affine as affine_lib
from evonorm_layers import layout as layout_lib
from evonorm_layers import statistics as stats_lib

_MOVING_VARIABLE_PREFIX = "moving_"


class NormActivation(tf_keras.layers.Layer):
  """A normalization-activation layer ending with a per-channel affine.

  Subclasses implement :meth:`normalize_activate`, which receives the input
  (float16, bfloat16 or float32) and the :class:`~evonorm_layers.affine.Affine`
  to apply, and may override :meth:`create_variables` to add per-channel
  variables besides ``gamma`` and ``beta``.

  Args:
    axis: the channel axis: ``-1`` for channels-last, ``1`` for
      channels-first. A one-element list is accepted, as Model Garden passes.
      See :mod:`evonorm_layers.layout` for which axes are batch and instance
      axes at each rank (2 to 5).
    epsilon: added inside every square root.
    nonlinearity: when False the layer is the normalization alone, for sites
      of a network that have a norm without an activation (last norm of a
      residual branch, projection shortcuts, MBConv projections, FPN outputs).
      Each layer documents what remains of its formula.
    center: create the shift variable ``beta``. False for a conditional layer
      whose ``beta`` comes with each call (or for no shift at all).
    scale: create the scale variable ``gamma``; False as ``center``.
    gamma_initializer, beta_initializer: initializers of ``gamma`` (default
      ones; ``"zeros"`` makes the layer output ``beta`` at first, which is how
      the authors' ResNets start the last norm of every residual branch)
      and ``beta`` (default zeros).
    **kwargs: base ``tf_keras.layers.Layer`` arguments (``name``, ``dtype``,
      ``trainable``).

  Call arguments:
    inputs: a floating-point tensor of rank 2 to 5.
    training: batch statistics (True) or moving ones (False) for
      batch-dependent layers; ignored by the others.
    gamma, beta: the conditional affine: ``[N, C]`` or ``[C]`` tensors used
      instead of the layer's own ``gamma`` / ``beta`` for this call.
  """

  #: True for layers whose output depends on other samples of the batch.
  batch_dependent = False

  def __init__(self, axis: int = -1, epsilon: float = 1e-5,
               nonlinearity: bool = True, center: bool = True,
               scale: bool = True, gamma_initializer="ones",
               beta_initializer="zeros", **kwargs):
    super().__init__(**kwargs)
    self.axis = layout_lib.validate_axis(axis, layer_name=self._label)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
      raise TypeError(f"{self._label}: `epsilon` must be a positive float. "
                      f"Received: epsilon={epsilon!r}.")
    if not epsilon > 0:
      raise ValueError(f"{self._label}: `epsilon` must be > 0 so that square "
                       f"roots of zero variance stay differentiable. "
                       f"Received: epsilon={epsilon}.")
    self.epsilon = float(epsilon)
    self.nonlinearity = bool(nonlinearity)
    self.center = bool(center)
    self.scale = bool(scale)
    self.gamma_initializer = tf_keras.initializers.get(gamma_initializer)
    self.beta_initializer = tf_keras.initializers.get(beta_initializer)
    self.layout: layout_lib.TensorLayout | None = None
    self.gamma = self.beta = None

  @property
  def _label(self) -> str:
    # Usable before super().__init__ has set the Keras name.
    name = getattr(self, "_name", None)
    return f"{type(self).__name__} {name!r}" if name else type(self).__name__

  # -- building ---------------------------------------------------------------

  def build(self, input_shape):
    shape = tf.TensorShape(input_shape)
    if shape.rank is None:
      raise ValueError(f"{self._label} needs inputs of known rank (2 or more). "
                       f"Received an input of unknown rank.")
    self.layout = layout_lib.TensorLayout.from_shape(
        shape.as_list(), self.axis, layer_name=self._label)
    self.input_spec = tf_keras.layers.InputSpec(
        ndim=self.layout.rank,
        axes={self.layout.channel_axis: self.layout.channels})
    if self.scale:
      self.gamma = self.add_channel_weight("gamma", self.gamma_initializer)
    if self.center:
      self.beta = self.add_channel_weight("beta", self.beta_initializer)
    self.create_variables()
    super().build(input_shape)

  def create_variables(self):
    """Creates layer-specific variables (``v1``, ``tau``, moving stats)."""

  def add_channel_weight(self, name: str, initializer, *,
                         trainable: bool = True, moving: bool = False):
    """A float32 ``[C]`` variable that is never autocast to float16."""
    extra = {}
    if moving:
      extra = dict(synchronization=tf.VariableSynchronization.ON_READ,
                   aggregation=tf.VariableAggregation.MEAN)
    return self.add_weight(
        name=name, shape=(self.layout.channels,), dtype=tf.float32,
        initializer=initializer, trainable=trainable,
        experimental_autocast=False, **extra)

  def channel_param(self, variable) -> tf.Tensor:
    """A ``[C]`` variable reshaped to broadcast against the input."""
    return tf.reshape(variable, self.layout.param_shape)

  # -- calling ----------------------------------------------------------------

  def call(self, inputs, training=None, gamma=None, beta=None):
    x = tf.convert_to_tensor(inputs)
    if not x.dtype.is_floating:
      raise TypeError(f"{self._label} expects floating-point inputs. "
                      f"Received dtype {x.dtype.name}.")
    if x.dtype not in (tf.float16, tf.bfloat16, tf.float32):
      x = tf.cast(x, tf.float32)
    affine = self.call_affine(gamma, beta, x)
    y = self.normalize_activate(x, self._resolve_training(training), affine)
    return tf.cast(y, self.compute_dtype) if y.dtype != self.compute_dtype else y

  def normalize_activate(self, x: tf.Tensor, training,
                         affine: affine_lib.Affine) -> tf.Tensor:
    """The layer's formula, ending with (or folding in) ``affine``."""
    raise NotImplementedError

  def call_affine(self, gamma, beta, x) -> affine_lib.Affine:
    """The affine of this call: the given tensors, else the variables."""
    batch = x.shape[0]
    conditional = gamma is not None or beta is not None
    if gamma is not None:
      gamma = affine_lib.conditional_parameter(gamma, "gamma", self.layout,
                                               batch, self._label)
    elif self.gamma is not None:
      gamma = self.channel_param(self.gamma)
    if beta is not None:
      beta = affine_lib.conditional_parameter(beta, "beta", self.layout,
                                              batch, self._label)
    elif self.beta is not None:
      beta = self.channel_param(self.beta)
    return affine_lib.Affine(gamma, beta, conditional)

  def _resolve_training(self, training):
    if training is None:
      training = tf_keras.backend.learning_phase()
    if isinstance(training, int):
      training = bool(training)
    # A frozen layer runs in inference mode, as tf_keras BatchNormalization.
    if not self.trainable:
      training = False
    return training

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(
        axis=self.axis, epsilon=self.epsilon, nonlinearity=self.nonlinearity,
        center=self.center, scale=self.scale,
        gamma_initializer=tf_keras.initializers.serialize(
            self.gamma_initializer),
        beta_initializer=tf_keras.initializers.serialize(
            self.beta_initializer))
    return config

  @property
  def uses_groups(self) -> bool:
    """Whether ``groups`` enters the layer's statistics."""
    return False


class GroupedNormActivation(NormActivation):
  """A layer whose statistics are taken over groups of channels.

  Args:
    groups: number of contiguous channel groups. When the channel count is not
      divisible, the largest divisor below ``groups`` is used (as in the
      authors' reference code); ``resolved_groups`` holds the count in use.
  """

  def __init__(self, groups: int = 32, axis: int = -1, epsilon: float = 1e-5,
               nonlinearity: bool = True, **kwargs):
    super().__init__(axis=axis, epsilon=epsilon, nonlinearity=nonlinearity,
                     **kwargs)
    self.groups = layout_lib.validate_groups(groups, layer_name=self._label)
    self.resolved_groups: int | None = None

  @property
  def uses_groups(self) -> bool:
    return True

  def build(self, input_shape):
    super().build(input_shape)
    self.resolved_groups = layout_lib.resolve_groups(
        self.groups, self.layout.channels, layer_name=self._label)

  def get_config(self):
    config = super().get_config()
    config.update(groups=self.groups)
    return config


class BatchDependentNormActivation(NormActivation):
  """A layer using batch statistics in training and moving ones in inference.

  Subclasses list their statistics in ``moving_statistics``; each gets a
  float32 non-trainable variable ``moving_<name>`` initialised to
  ``moving_initializers[name]``. In training the batch statistic is used and
  the moving one updated as
  ``moving = momentum * moving + (1 - momentum) * batch``, outside the
  gradient. With ``training=False`` (or a frozen layer) the moving statistics
  are used.

  Args:
    momentum: decay of the moving statistics, in [0, 1].
    synchronized: compute batch statistics over all replicas of the current
      ``tf.distribute`` strategy (one collective per layer call). When False,
      statistics are per replica, as in the authors' TPU reference code.
  """

  batch_dependent = True
  moving_statistics: tuple[str, ...] = ()
  moving_initializers: Mapping[str, str] = {}

  def __init__(self, momentum: float = 0.9, synchronized: bool = False,
               axis: int = -1, epsilon: float = 1e-5, nonlinearity: bool = True,
               **kwargs):
    super().__init__(axis=axis, epsilon=epsilon, nonlinearity=nonlinearity,
                     **kwargs)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
      raise TypeError(f"{self._label}: `momentum` must be a float in [0, 1]. "
                      f"Received: momentum={momentum!r}.")
    if not 0.0 <= momentum <= 1.0:
      raise ValueError(f"{self._label}: `momentum` must be in [0, 1] (moving "
                       "= momentum * moving + (1 - momentum) * batch). "
                       f"Received: momentum={momentum}.")
    self.momentum = float(momentum)
    self.synchronized = bool(synchronized)

  def create_variables(self):
    self.moving = {
        name: self.add_channel_weight(
            _MOVING_VARIABLE_PREFIX + name,
            self.moving_initializers.get(name, "ones"),
            trainable=False, moving=True)
        for name in self.moving_statistics
    }

  def batch_or_moving(self, training, batch_statistics: Callable[
      [], tuple[Mapping[str, tf.Tensor], tf.Tensor]],
                      names: tuple[str, ...] | None = None):
    """Returns the statistics to normalize with, updating the moving ones.

    Args:
      training: Python bool or boolean tensor.
      batch_statistics: computes ``(statistics, count)``: the batch
        statistics (keepdims float32 tensors broadcastable to the input),
        keyed by moving-statistic name, and the number of samples they were
        computed from (over all replicas when synchronized); only called in
        training.
      names: the statistics it returns (default: every moving statistic).

    Returns:
      A dict from statistic name to a tensor broadcastable to the input.
    """
    names = tuple(names or self.moving)

    def from_batch():
      stats, count = batch_statistics()
      self.update_moving(stats, count)
      return {name: stats[name] for name in names}

    def from_moving():
      return {name: tf.reshape(self.moving[name],
                               (1,) + self.layout.param_shape)
              for name in names}

    if isinstance(training, bool):
      return from_batch() if training else from_moving()
    return tf.__internal__.smart_cond.smart_cond(training, from_batch,
                                                 from_moving)

  def update_moving(self, stats: Mapping[str, tf.Tensor], count: tf.Tensor):
    """``moving = momentum * moving + (1 - momentum) * batch``, no gradient.

    A batch of ``count == 0`` samples (an empty replica at the end of an
    uneven dataset) leaves the moving statistics as they are: its
    statistics are undefined (0/0).
    """
    for name, value in stats.items():
      update_moving_average(self.moving[name], value, self.momentum,
                            tf.greater(count, 0))

  def batch_or_moving_variance(
      self, training,
      instance_moments: Callable[[], tuple[tf.Tensor, tf.Tensor]]
  ) -> tf.Tensor:
    """The variance to normalize with: the batch's in training, from the
    instance moments of ``x`` (computed only then), over all replicas with
    ``synchronized=True``, the moving variance updated; the moving one in
    inference."""

    def batch_variance():
      moments = stats_lib.batch_moments(*instance_moments(),
                                        synchronized=self.synchronized)
      return {"variance": moments.variance}, moments.count

    return self.batch_or_moving(training, batch_variance,
                                ("variance",))["variance"]

  def batch_moments(self, x: tf.Tensor) -> stats_lib.BatchMoments:
    """Per-channel batch mean, variance and sample count of ``x`` (over all
    replicas with ``synchronized=True``)."""
    return stats_lib.batch_moments(
        *stats_lib.instance_moments(x, self.layout),
        synchronized=self.synchronized)

  def cross_replica(self) -> bool:
    """Whether this call aggregates batch statistics across replicas."""
    ctx = tf.distribute.get_replica_context()
    return (self.synchronized and ctx is not None and
            ctx.num_replicas_in_sync > 1)

  def get_config(self):
    config = super().get_config()
    config.update(momentum=self.momentum, synchronized=self.synchronized)
    return config


def update_moving_average(variable: tf.Variable, batch_value: tf.Tensor,
                          momentum: float, where) -> None:
  """``variable = momentum * variable + (1 - momentum) * batch_value`` where
  ``where`` holds (a boolean tensor broadcastable to the variable), outside
  the gradient. The one moving-average update of every batch-dependent
  layer, searched and interpreted ones included."""
  batch_value = tf.stop_gradient(tf.reshape(batch_value, tf.shape(variable)))
  step = tf.where(where, variable - batch_value, tf.zeros_like(variable))
  variable.assign_sub(step * (1.0 - momentum))
