"""The per-channel affine ``* gamma + beta`` that ends every layer, and its
conditional form.

Every layer of the library applies its affine through one :class:`Affine`,
either directly (``affine.apply(y)``) or folded into a per-channel (or
per-sample) scale and shift that the layer multiplies in anyway
(``affine.fold(scale, shift)``), which saves passes over the activation.

``gamma`` and ``beta`` are the layer's own variables, or tensors given at call
time for conditional normalization (BigGAN's class-conditional BatchNorm:
gain ``1 + linear(c)``, bias ``linear(c)``)::

    layer = get_norm_activation("evonorm_b0", center=False, scale=False)
    y = layer(x, training=True, gamma=1.0 + gain(c), beta=bias(c))

A call-time ``gamma`` or ``beta`` has shape ``[N, C]`` (one per sample) or
``[C]`` and replaces the corresponding variable for that call. A layer built
with ``scale=False`` / ``center=False`` has no ``gamma`` / ``beta`` variable
and, unless one is given at call time, no scaling / shift.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from evonorm_layers import layout as layout_lib
from evonorm_layers import recompute


@dataclasses.dataclass(frozen=True)
class Affine:
  """``y * gamma + beta`` with float32 ``gamma``/``beta`` that broadcast
  against the layer's input, or ``None`` for "no scaling" / "no shift".

  ``conditional`` is True when they came from the call (per-sample or
  per-channel tensors) rather than from the layer's variables.
  """

  gamma: tf.Tensor | None
  beta: tf.Tensor | None
  conditional: bool = False

  def apply(self, y: tf.Tensor) -> tf.Tensor:
    """``y * gamma + beta``, returned in ``y``'s dtype (float32 arithmetic)."""
    return scale_shift(y, self.gamma, self.beta)

  def fold(self, scale: tf.Tensor, shift: tf.Tensor | None = None):
    """Folds the affine into ``x * scale + shift``.

    Returns ``(scale * gamma, shift * gamma + beta)``, so that
    ``x * scale' + shift'`` equals ``(x * scale + shift) * gamma + beta``;
    either may be ``None`` (nothing to multiply / add).
    """
    if self.gamma is not None:
      scale = scale * self.gamma
      shift = None if shift is None else shift * self.gamma
    if self.beta is not None:
      shift = self.beta if shift is None else shift + self.beta
    return scale, shift

  def tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
    """``(gamma, beta)`` as tensors (scalar 1 / 0 where absent), to pass as
    arguments of a recomputed function, which rebuilds the affine with
    ``Affine(gamma, beta)``."""
    one, zero = tf.ones((), tf.float32), tf.zeros((), tf.float32)
    return (one if self.gamma is None else self.gamma,
            zero if self.beta is None else self.beta)


def scale_shift(x: tf.Tensor, scale: tf.Tensor | None,
                shift: tf.Tensor | None) -> tf.Tensor:
  """``x * scale + shift`` (float32 ``scale``/``shift``; either may be
  ``None``), returned in ``x``'s dtype.

  Under mixed precision the arithmetic, and the reductions that give the
  gradients of ``scale`` and ``shift``, are float32, and only ``x`` is kept
  for backprop (:func:`evonorm_layers.recompute.float32_elementwise`).
  """
  factors = [t for t in (scale, shift) if t is not None]
  if not factors:
    return x

  def fn(x, *factors):
    factors = list(factors)
    if scale is not None:
      x = x * factors.pop(0)
    if shift is not None:
      x = x + factors.pop(0)
    return x

  return recompute.float32_elementwise(fn, x, *factors)


def conditional_parameter(value, name: str, layout: layout_lib.TensorLayout,
                          batch, layer_name: str) -> tf.Tensor:
  """A call-time ``gamma``/``beta`` reshaped to broadcast against the input.

  Args:
    value: ``[N, C]`` (per sample) or ``[C]`` (per channel).
    name: ``"gamma"`` or ``"beta"``, for messages.
    layout: the input's layout.
    batch: the input's batch size (static int or None).
    layer_name: for messages.

  Returns:
    A float32 tensor of shape ``[N] + param_shape`` or ``param_shape``.
  """
  t = tf.convert_to_tensor(value)
  if not t.dtype.is_floating:
    raise TypeError(f"{layer_name}: the conditional `{name}` must be a "
                    f"floating-point tensor. Received dtype {t.dtype.name}.")
  shape = t.shape
  channels = layout.channels
  expected = (f"[batch, {channels}] (one value per sample and channel) or "
              f"[{channels}]")
  if shape.rank not in (1, 2):
    raise ValueError(f"{layer_name}: the conditional `{name}` must have shape "
                     f"{expected}. Received shape {shape.as_list()}.")
  if shape[-1] is not None and shape[-1] != channels:
    raise ValueError(f"{layer_name}: the conditional `{name}` has "
                     f"{shape[-1]} channels but the input has {channels}. "
                     f"Expected shape {expected}.")
  if shape.rank == 2 and None not in (shape[0], batch) and shape[0] != batch:
    raise ValueError(f"{layer_name}: the conditional `{name}` has "
                     f"{shape[0]} rows but the input's batch has {batch} "
                     f"samples. Expected shape {expected}.")
  t = tf.cast(t, tf.float32)
  if shape.rank == 1:
    return tf.reshape(t, layout.param_shape)
  return tf.reshape(t, layout.stat_shape)
