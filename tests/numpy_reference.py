"""Independent float64 NumPy implementations of every layer's formula.

Written from the paper's tables, not from the library: statistics are taken
directly over the index sets (no law-of-total-variance shortcuts), on a
channels-last copy of the input. Each reference takes the input, a dict of
per-channel parameters and a dict of moving statistics, and returns the output
and the updated moving statistics.

The code is array-API generic: with ``xp=tf.experimental.numpy`` the same
formulas run in TensorFlow, and plain autodiff through them gives reference
gradients for the library's hand-written ones.
"""

from __future__ import annotations

import numpy as np


def _batch_axes(x):  # (b, w, h): all but the channel axis
  return tuple(range(len(x.shape) - 1))


def _instance_axes(x):  # (w, h): all but batch and channel
  return tuple(range(1, len(x.shape) - 1))


def _var(xp, x, axes):
  return xp.var(x, axis=axes, keepdims=True) if axes else xp.zeros_like(x)


def _mean(xp, x, axes):
  return xp.mean(x, axis=axes, keepdims=True) if axes else x


def _grouped(xp, x, groups, stat):
  """``stat`` ("mean", "var" or "mean_square") over (w, h, c/g), per channel."""
  shape = tuple(x.shape)
  c = shape[-1]
  xg = xp.reshape(x, shape[:-1] + (groups, c // groups))
  axes = tuple(range(1, len(xg.shape) - 2)) + (len(xg.shape) - 1,)
  if stat == "mean":
    value = xp.mean(xg, axis=axes, keepdims=True)
  elif stat == "var":
    value = xp.var(xg, axis=axes, keepdims=True)
  else:
    value = xp.mean(xg * xg, axis=axes, keepdims=True)
  return xp.reshape(xp.broadcast_to(value, xg.shape), shape)


def _sigmoid(xp, x):
  return 1.0 / (1.0 + xp.exp(-x))


def _update(moving, batch, momentum):
  return momentum * moving + (1.0 - momentum) * batch


def _batch_stat(xp, name, x, moving, training, momentum, fn):
  """Batch statistic ``fn(x, axes)`` in training, moving value otherwise."""
  if training:
    value = fn(x, _batch_axes(x))
    flat = np.asarray(value).reshape(-1)
    return value, {**moving, name: _update(moving[name], flat, momentum)}
  return xp.asarray(moving[name]), moving


def evonorm_b(variant):

  def reference(xp, x, p, moving, *, training, eps, momentum, nonlinearity,
                **_):
    var_b, moving = _batch_stat(xp, "variance", x, moving, training, momentum,
                                lambda t, a: _var(xp, t, a))
    std_b = xp.sqrt(var_b + eps)
    if not nonlinearity:
      return x / std_b * p["gamma"] + p["beta"], moving
    inst = _instance_axes(x)
    if variant == "b0":
      other = p["v1"] * x + xp.sqrt(_var(xp, x, inst) + eps)
    elif variant == "b1":
      other = (x + 1.0) * xp.sqrt(_mean(xp, x * x, inst) + eps)
    else:  # b2, read as Table 3 prints it: sqrt(mu_wh(x^2) - x)
      z = _mean(xp, x * x, inst) - x
      other = xp.sign(z) * xp.sqrt(xp.abs(z) + eps)
    return x / xp.maximum(std_b, other) * p["gamma"] + p["beta"], moving

  return reference


def evonorm_s(variant):

  def reference(xp, x, p, moving, *, groups, eps, nonlinearity, **_):
    stat = "mean_square" if variant == "s2" else "var"
    denom = xp.sqrt(_grouped(xp, x, groups, stat) + eps)
    if not nonlinearity:
      num = x
    elif variant == "s0":
      num = x * _sigmoid(xp, p["v1"] * x)
    else:
      num = x * _sigmoid(xp, x)
    return num / denom * p["gamma"] + p["beta"], moving

  return reference


def _relu(xp, z, p):
  del p
  return xp.maximum(z, 0.0)


def _silu(xp, z, p):
  return z * _sigmoid(xp, p["v1"] * z)


def batch_norm(activation):

  def reference(xp, x, p, moving, *, training, eps, momentum, nonlinearity,
                **_):
    mean, moving = _batch_stat(xp, "mean", x, moving, training, momentum,
                               lambda t, a: _mean(xp, t, a))
    var, moving = _batch_stat(xp, "variance", x, moving, training, momentum,
                              lambda t, a: _var(xp, t, a))
    z = (x - mean) / xp.sqrt(var + eps) * p["gamma"] + p["beta"]
    return (activation(xp, z, p) if nonlinearity else z), moving

  return reference


def group_norm(activation, fixed_groups=None):

  def reference(xp, x, p, moving, *, eps, nonlinearity, groups=None, **_):
    g = fixed_groups or groups
    mean = _grouped(xp, x, g, "mean")
    var = _grouped(xp, x, g, "var")
    z = (x - mean) / xp.sqrt(var + eps) * p["gamma"] + p["beta"]
    return (activation(xp, z, p) if nonlinearity else z), moving

  return reference


def frn_tlu(xp, x, p, moving, *, eps, nonlinearity, **_):
  nu2 = _mean(xp, x * x, _instance_axes(x))
  z = x / xp.sqrt(nu2 + eps) * p["gamma"] + p["beta"]
  return (xp.maximum(z, p["tau"]) if nonlinearity else z), moving


def pixelnorm_relu(xp, x, p, moving, *, eps, nonlinearity, **_):
  z = x / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps)
  z = z * p["gamma"] + p["beta"]
  return (xp.maximum(z, 0.0) if nonlinearity else z), moving


def rs_rej(xp, x, p, moving, *, training, eps, momentum, nonlinearity, **_):
  second, moving = _batch_stat(
      xp, "second_moment", x, moving, training, momentum,
      lambda t, a: xp.mean(t * t, axis=a, keepdims=True))
  num = xp.maximum(x, 0.0) if nonlinearity else x
  return num / xp.sqrt(second + eps) * p["gamma"] + p["beta"], moving


REFERENCES = {
    "bn_relu": batch_norm(_relu),
    "bn_silu": batch_norm(_silu),
    "gn_relu": group_norm(_relu),
    "gn_silu": group_norm(_silu),
    "ln_relu": group_norm(_relu, fixed_groups=1),
    "frn_tlu": frn_tlu,
    "pixelnorm_relu": pixelnorm_relu,
    "rs_rej": rs_rej,
    "evonorm_b0": evonorm_b("b0"),
    "evonorm_b1": evonorm_b("b1"),
    "evonorm_b2": evonorm_b("b2"),
    "evonorm_s0": evonorm_s("s0"),
    "evonorm_s1": evonorm_s("s1"),
    "evonorm_s2": evonorm_s("s2"),
}


def reference_forward(name, x, params, moving, *, axis=-1, xp=np, **kwargs):
  """Runs the reference for layer ``name`` on ``x`` with channel ``axis``.

  ``params`` and ``moving`` hold ``[C]`` arrays; returns ``(y, moving)`` with
  ``y`` in the input's layout. With ``xp=tf.experimental.numpy``, ``x`` and
  ``params`` may be float64 tensors watched by a ``tf.GradientTape``.
  """
  x_last = xp.moveaxis(xp.asarray(x, np.float64), axis, -1)
  p = {k: xp.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.asarray(v, np.float64) for k, v in moving.items()}
  y, m = REFERENCES[name](xp, x_last, p, m, **kwargs)
  return xp.moveaxis(y, -1, axis), m
