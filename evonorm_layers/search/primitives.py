"""The search space's primitive operations (Table 2 of the paper).

Element-wise ops take one or two tensors of the input's shape. Aggregation
ops replace every element with a statistic over an index set ``I`` and keep
the shape: ``mean`` (1st moment ``mu_I(x)``), ``rms`` (2nd moment
``sqrt(mu_I(x^2))``) and ``std`` (centered 2nd moment ``sqrt(s2_I(x))``), over
``bwh`` (batch), ``whc`` (layer), ``wh`` (instance) and ``whc/g`` (group; the
grouping of :mod:`evonorm_layers.layout`).

Where an op needs it for numerical safety, epsilon is inserted exactly as in
the hand-written layers: inside every square root (``rms``, ``std``, Sqrt) and
inside the logarithm. Div, Exp and the rest are unguarded: a candidate that
divides by zero or overflows produces Inf/NaN and is rejected by the search,
as in the paper.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

from evonorm_layers import statistics as stats_lib

INDEX_SETS = ("bwh", "whc", "wh", "whc/g")
# Index-set subscripts as the paper prints them.
_SUBSCRIPT = {"bwh": "b,w,h", "whc": "w,h,c", "wh": "w,h", "whc/g": "w,h,c/g"}
MOMENTS = ("mean", "rms", "std")


@dataclasses.dataclass(frozen=True)
class Primitive:
  """One op: its arity, how to print it, and (element-wise ops) how to run it.

  ``text`` and ``latex`` are templates in which ``#0`` and ``#1`` stand for
  the operands' formulas (see :func:`render`).
  Aggregations have ``moment`` and ``index_set`` set and are run by the
  compiled layer, which owns batch statistics and their moving averages.
  """

  name: str
  arity: int
  text: str
  latex: str
  fn: Callable[..., tf.Tensor] | None = None
  commutative: bool = False
  moment: str | None = None
  index_set: str | None = None

  @property
  def is_aggregation(self) -> bool:
    return self.moment is not None

  @property
  def uses_batch(self) -> bool:
    return self.index_set == "bwh"


def _signed_log(x, epsilon):
  return tf.sign(x) * tf.math.log(tf.abs(x) + epsilon)


_ELEMENTWISE = [
    Primitive("add", 2, "(#0 + #1)", r"\left(#0 + #1\right)",
              lambda a, b, eps: a + b, commutative=True),
    Primitive("mul", 2, "#0*#1", r"#0 #1", lambda a, b, eps: a * b,
              commutative=True),
    Primitive("div", 2, "#0 / #1", r"\frac{#0}{#1}",
              lambda a, b, eps: a / b),
    Primitive("max", 2, "max(#0, #1)", r"\max\left(#0, #1\right)",
              lambda a, b, eps: tf.maximum(a, b), commutative=True),
    Primitive("neg", 1, "-#0", r"-#0", lambda a, eps: -a),
    Primitive("sigmoid", 1, "sigmoid(#0)", r"\sigma\left(#0\right)",
              lambda a, eps: tf.sigmoid(a)),
    Primitive("tanh", 1, "tanh(#0)", r"\tanh\left(#0\right)",
              lambda a, eps: tf.tanh(a)),
    Primitive("exp", 1, "exp(#0)", r"e^{#0}", lambda a, eps: tf.exp(a)),
    Primitive("log", 1, "log(#0)", r"\mathrm{sign}(#0)\ln\left|#0\right|",
              _signed_log),
    Primitive("abs", 1, "|#0|", r"\left|#0\right|", lambda a, eps: tf.abs(a)),
    Primitive("square", 1, "#0^2", r"\left(#0\right)^2",
              lambda a, eps: tf.square(a)),
    Primitive("sqrt", 1, "sqrt(#0)", r"\mathrm{sign}(#0)\sqrt{\left|#0\right|}",
              lambda a, eps: stats_lib.signed_sqrt(a, eps)),
]


def _aggregation(moment: str, index_set: str) -> Primitive:
  sub = _SUBSCRIPT[index_set]
  text = {"mean": f"mu_{index_set}(#0)",
          "rms": f"sqrt(mu_{index_set}(#0^2))",
          "std": f"sqrt(s2_{index_set}(#0))"}[moment]
  latex = {"mean": rf"\mu_{{{sub}}}\left(#0\right)",
           "rms": rf"\sqrt{{\mu_{{{sub}}}\left(#0^2\right)}}",
           "std": rf"\sqrt{{s^2_{{{sub}}}\left(#0\right)}}"}[moment]
  return Primitive(f"{moment}_{index_set}", 1, text, latex, moment=moment,
                   index_set=index_set)


def render(template: str, operands) -> str:
  """Fills ``#0``, ``#1`` in a primitive's template with operand formulas."""
  out = template
  for i, operand in enumerate(operands):
    out = out.replace(f"#{i}", operand)
  return out


PRIMITIVES: dict[str, Primitive] = {
    p.name: p for p in _ELEMENTWISE + [
        _aggregation(m, i) for i in INDEX_SETS for m in MOMENTS]
}


def op_names(batch_independent: bool = False) -> list[str]:
  """The ops a search may draw: all, or none that aggregates over the batch."""
  return [n for n, p in PRIMITIVES.items()
          if not (batch_independent and p.uses_batch)]


def get(name: str) -> Primitive:
  try:
    return PRIMITIVES[name]
  except KeyError:
    raise ValueError(f"Unknown search primitive {name!r}. Valid: "
                     f"{', '.join(PRIMITIVES)}.") from None
