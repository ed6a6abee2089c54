"""Keeping a long-lived search worker's TensorFlow state small: graph
optimizations off for the proxies' small steps, and the process-wide
gradient registry cleaned of the graphs a candidate leaves behind."""

from __future__ import annotations

import tensorflow as tf
# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import ops as tf_ops


# pylint: enable=g-direct-tensorflow-import


def disable_graph_optimizations():
  """Turns Grappler off for this process (the search's workers, the
  calibration command).

  The interpreter's second-order graphs take Grappler about a minute per
  anchor to optimize (measured: the stability step 64 s with it, 9 s
  without) for no measurable gain per step; and it must stay off, because
  functions are instantiated again, and optimized again, when the options
  change.
  """
  tf.config.optimizer.set_experimental_options({"disable_meta_optimizer":
                                                True})


def custom_gradient_names() -> set[str]:
  """The gradient functions registered by ``tf.custom_gradient`` so far.

  In a traced function every call of a ``tf.custom_gradient`` function (the
  library's moments, at every norm site) registers a gradient function in
  TensorFlow's process-wide gradient registry under a new name, and nothing
  ever removes it; the function's closure holds tensors of the traced
  graph, so the whole graph (and everything it captured) stays alive. A
  search worker traces a new model per fully evaluated candidate and
  anchor: it grew by ~50 MiB per model (measured: 16 evaluations of one
  anchor, 1066 to 1875 MiB) until :func:`forget_custom_gradients` dropped
  the names of models that are gone (then ~3.6 MiB per model).
  """
  return {name for name in _gradient_registry()
          if name.startswith("CustomGradient-")}


def _gradient_registry() -> dict:
  # (A private table of TensorFlow's; if a release moves it, nothing is
  # forgotten and tests/test_search_program.py sees the graphs outlive
  # their evaluation.)
  registry = getattr(tf_ops, "_gradient_registry", None)
  return getattr(registry, "_registry", {})


def forget_custom_gradients(names) -> None:
  """Unregisters gradient functions (names from
  :func:`custom_gradient_names`) of graphs that will never be
  differentiated again: their models and traced functions are gone."""
  registry = _gradient_registry()
  for name in names:
    registry.pop(name, None)
