"""Independent float64 NumPy implementations of every layer's formula.

Written from the paper's tables, not from the library: statistics are taken
directly over the index sets (no law-of-total-variance shortcuts), on a
channels-last copy of the input. Each reference takes the input, a dict of
per-channel parameters and a dict of moving statistics, and returns the output
and the updated moving statistics.
"""

from __future__ import annotations

import numpy as np


def _channels_last(x, axis):
  return np.moveaxis(x, axis, -1)


def _batch_axes(x):  # (b, w, h): all but the channel axis
  return tuple(range(x.ndim - 1))


def _instance_axes(x):  # (w, h): all but batch and channel
  return tuple(range(1, x.ndim - 1))


def _var(x, axes):
  return np.var(x, axis=axes, keepdims=True) if axes else np.zeros_like(x)


def _mean(x, axes):
  return np.mean(x, axis=axes, keepdims=True) if axes else x


def _grouped(x, groups, fn):
  """Applies ``fn(xg, axes)`` over (w, h, c/g) and broadcasts back to x."""
  c = x.shape[-1]
  xg = x.reshape(x.shape[:-1] + (groups, c // groups))
  axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
  stat = fn(xg, axes)
  return np.broadcast_to(stat, xg.shape).reshape(x.shape)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _signed_sqrt(x, eps):
  return np.sign(x) * np.sqrt(np.abs(x) + eps)


def _update(moving, batch, momentum):
  return momentum * moving + (1.0 - momentum) * batch


def _batch_stat(name, x, moving, training, momentum, fn):
  """Batch statistic ``fn(x, axes)`` in training, moving value otherwise."""
  if training:
    value = fn(x, _batch_axes(x))
    return value, {**moving, name: _update(moving[name], value.reshape(-1),
                                           momentum)}
  return moving[name], moving


def evonorm_b(variant):

  def reference(x, p, moving, *, training, eps, momentum, nonlinearity, **_):
    var_b, moving = _batch_stat("variance", x, moving, training, momentum,
                                _var)
    std_b = np.sqrt(var_b + eps)
    if not nonlinearity:
      return x / std_b * p["gamma"] + p["beta"], moving
    inst = _instance_axes(x)
    if variant == "b0":
      other = p["v1"] * x + np.sqrt(_var(x, inst) + eps)
    elif variant == "b1":
      other = (x + 1.0) * np.sqrt(_mean(x * x, inst) + eps)
    else:  # b2, read as Table 3 prints it: sqrt(mu_wh(x^2) - x)
      other = _signed_sqrt(_mean(x * x, inst) - x, eps)
    return x / np.maximum(std_b, other) * p["gamma"] + p["beta"], moving

  return reference


def evonorm_s(variant):

  def reference(x, p, moving, *, groups, eps, nonlinearity, **_):
    if variant == "s2":
      denom = np.sqrt(_grouped(x, groups, lambda t, a: np.mean(
          t * t, axis=a, keepdims=True)) + eps)
    else:
      denom = np.sqrt(_grouped(x, groups, lambda t, a: np.var(
          t, axis=a, keepdims=True)) + eps)
    if not nonlinearity:
      num = x
    elif variant == "s0":
      num = x * _sigmoid(p["v1"] * x)
    else:
      num = x * _sigmoid(x)
    return num / denom * p["gamma"] + p["beta"], moving

  return reference


def _relu(z, p):
  del p
  return np.maximum(z, 0.0)


def _silu(z, p):
  return z * _sigmoid(p["v1"] * z)


def batch_norm(activation):

  def reference(x, p, moving, *, training, eps, momentum, nonlinearity, **_):
    mean, moving = _batch_stat("mean", x, moving, training, momentum, _mean)
    var, moving = _batch_stat("variance", x, moving, training, momentum, _var)
    z = (x - mean) / np.sqrt(var + eps) * p["gamma"] + p["beta"]
    return (activation(z, p) if nonlinearity else z), moving

  return reference


def group_norm(activation, fixed_groups=None):

  def reference(x, p, moving, *, eps, nonlinearity, groups=None, **_):
    g = fixed_groups or groups
    mean = _grouped(x, g, lambda t, a: np.mean(t, axis=a, keepdims=True))
    var = _grouped(x, g, lambda t, a: np.var(t, axis=a, keepdims=True))
    z = (x - mean) / np.sqrt(var + eps) * p["gamma"] + p["beta"]
    return (activation(z, p) if nonlinearity else z), moving

  return reference


def frn_tlu(x, p, moving, *, eps, nonlinearity, **_):
  nu2 = _mean(x * x, _instance_axes(x))
  z = x / np.sqrt(nu2 + eps) * p["gamma"] + p["beta"]
  return (np.maximum(z, p["tau"]) if nonlinearity else z), moving


def pixelnorm_relu(x, p, moving, *, eps, nonlinearity, **_):
  z = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
  z = z * p["gamma"] + p["beta"]
  return (np.maximum(z, 0.0) if nonlinearity else z), moving


def rs_rej(x, p, moving, *, training, eps, momentum, nonlinearity, **_):
  second, moving = _batch_stat("second_moment", x, moving, training, momentum,
                               lambda t, a: np.mean(t * t, axis=a,
                                                    keepdims=True))
  num = np.maximum(x, 0.0) if nonlinearity else x
  return num / np.sqrt(second + eps) * p["gamma"] + p["beta"], moving


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


def reference_forward(name, x, params, moving, *, axis=-1, **kwargs):
  """Runs the reference for layer ``name`` on ``x`` with channel ``axis``.

  ``params`` and ``moving`` hold ``[C]`` arrays; returns ``(y, moving)`` with
  ``y`` in the input's layout.
  """
  x_last = _channels_last(np.asarray(x, np.float64), axis)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.asarray(v, np.float64) for k, v in moving.items()}
  y, m = REFERENCES[name](x_last, p, m, **kwargs)
  return np.moveaxis(y, -1, axis), m
