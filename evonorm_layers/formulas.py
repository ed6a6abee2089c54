"""The elementwise part of every EvoNorm, written once.

An EvoNorm is statistics (small per-sample or per-channel tensors, from
:mod:`evonorm_layers.statistics`) and one elementwise formula over the big
activation ``x``. The formulas fall into three families; each layer is one
family with its own operands:

==========  ===================================  ==============================
family      formula, before the affine           layers and operands
==========  ===================================  ==============================
``BLinear`` ``x / max(s, a*x + b)``              B0: ``a = v1``,
                                                 ``b = sqrt(s2_wh + eps)``;
                                                 B1: ``a = b = sqrt(mu_wh(x^2)
                                                 + eps)`` (``(x + 1) r``)
``BSqrt``   ``x / max(s, sqrt_signed(m - x))``   B2: ``m = mu_wh(x^2)``
``SSigmoid`` ``x * sigmoid(a*x)``                S0: ``a = v1``; S1, S2:
                                                 ``a = 1``
==========  ===================================  ==============================

``s`` is the batch standard deviation ``sqrt(s2_bwh + eps)`` (the moving one
in inference). The S series' group statistic is not in the formula: it folds
with ``gamma`` into the per-(sample, channel) ``scale`` of the affine that
ends every family, ``y = formula(x, ...) * scale + shift``.

The layers' composite path (:mod:`evonorm_layers.evonorm`), the fused CPU
kernels' reference and second derivatives (:mod:`evonorm_layers.fused`) call
these functions; the C++ kernels and the search space's graphs of the same
layers are tested against them (``tests/test_fused_kernels.py``,
``tests/test_search_graph.py``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf

from evonorm_layers import statistics as stats_lib


def b_linear(x, s, a, b, epsilon=None):
  """``x / max(s, a*x + b)``: EvoNorm-B0 and B1."""
  del epsilon  # no square root of x in this family
  return x / tf.maximum(s, a * x + b)


def b_sqrt(x, s, m, epsilon):
  """``x / max(s, sqrt_signed(m - x))``: EvoNorm-B2 (the search space's
  signed square root, since ``m - x`` can be negative)."""
  return x / tf.maximum(s, stats_lib.signed_sqrt(m - x, epsilon))


def s_sigmoid(x, a, epsilon=None):
  """``x * sigmoid(a*x)``: the numerator of EvoNorm-S0, S1 and S2."""
  del epsilon
  return x * tf.sigmoid(a * x)


class Family(NamedTuple):
  """A family's formula and the names of its operands, in call order."""
  formula: Callable[..., tf.Tensor]
  operands: tuple[str, ...]


FAMILIES = {
    "BLinear": Family(b_linear, ("s", "a", "b")),
    "BSqrt": Family(b_sqrt, ("s", "m")),
    "SSigmoid": Family(s_sigmoid, ("a",)),
}

#: The affine that ends every family: ``* scale + shift``.
AFFINE = ("scale", "shift")


def operand_names(family: str) -> tuple[str, ...]:
  """Every operand of ``family`` after ``x``, the affine's included."""
  return FAMILIES[family].operands + AFFINE


def evaluate(family: str, x, operands, epsilon: float):
  """``formula(x, *operands[:-2]) * scale + shift`` with ``operands`` in the
  order of :func:`operand_names` (float32 arithmetic is the caller's)."""
  *inner, scale, shift = operands
  return FAMILIES[family].formula(x, *inner, epsilon=epsilon) * scale + shift
