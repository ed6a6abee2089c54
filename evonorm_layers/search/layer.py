"""A layer graph compiled into a tf_keras norm-activation layer.

``SearchedNormActivation(graph)`` evaluates the graph's nodes in order on the
float32 input and ends with the per-channel affine, with the same constructor
shape as every other layer of the library. Batch aggregations (index set
``bwh``) use batch statistics in training (cross-replica with
``synchronized=True``) and a moving average per aggregation node in
inference, exactly as the hand-written B-series: ``std_bwh`` tracks the
variance, ``rms_bwh`` the second moment, ``mean_bwh`` the mean of its input.

``register_searched_layer(name, graph)`` puts a graph in the
``evonorm_layers`` registry, so backbones, heads and exports can use it by
name; the graph is part of the layer's config, so saved models reload.

``nonlinearity=False`` (norm sites without an activation) uses the
normalization of the graph's series, as the EvoNorms do: ``x /
sqrt(s2_bwh(x))`` for a graph with batch aggregations, ``x /
sqrt(s2_{wh,c/g}(x))`` otherwise.

The affine (conditional or not, see :mod:`evonorm_layers.affine`) follows the
graph's output. A graph's ops are arbitrary (``exp``, ``square``, ...), so a
searched layer computes in float32 under mixed precision too.
"""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf
import tf_keras

from evonorm_layers import base
from evonorm_layers import evonorm
from evonorm_layers import layout as layout_lib
from evonorm_layers import registry
from evonorm_layers import statistics as stats_lib
from evonorm_layers.search import graph as graph_lib
from evonorm_layers.search import primitives

_MOVING_OF_MOMENT = {"mean": "mean", "rms": "second_moment",
                     "std": "variance"}
_MOVING_INIT = {"mean": "zeros", "second_moment": "ones", "variance": "ones"}


def _as_graph(graph) -> graph_lib.LayerGraph:
  if isinstance(graph, graph_lib.LayerGraph):
    return graph
  if isinstance(graph, str):
    return graph_lib.LayerGraph.from_json(graph)
  return graph_lib.LayerGraph.from_dict(graph)


class SharedTraces:
  """Traced graph functions shared by ``SearchedNormActivation`` layers.

  Every call site of a compiled layer traces the graph's ops, and their
  gradients, into the model's training step: most of the time it takes to
  trace a small model's step (measured on the laptop proxies: 1.6-2.0 s of
  about 2 s, against 0.4 s with Keras's BatchNormalization). Layers that
  share one of these call a function traced once per graph, input rank
  and channel axis (any channel count), groups and training flag, never
  inlined, so it and its gradient are traced once for all of them, across
  models too. The search gives one to all anchors of a candidate.
  Python-bool ``training`` only (the others trace inline, as do sites
  without a nonlinearity, a few ops each), and not with ``synchronized``
  (the batch moments are the replica's).
  """

  def __init__(self):
    self._functions = {}

  def get(self, key, make):
    if key not in self._functions:
      self._functions[key] = make()
    return self._functions[key]

  def __len__(self):
    return len(self._functions)


@tf_keras.saving.register_keras_serializable(package="EvoNorm")
class SearchedNormActivation(base.BatchDependentNormActivation):
  """A norm-activation layer defined by a ``LayerGraph``.

  Args:
    graph: a ``LayerGraph``, its dict or its JSON.
    groups: groups of the ``whc/g`` aggregations (largest divisor fallback).
    momentum, synchronized: as for batch-dependent layers; unused when the
      graph has no batch aggregation.
    axis, epsilon, nonlinearity: as for every layer of the library.
  """

  def __init__(self, graph, groups: int = 32, momentum: float = 0.9,
               synchronized: bool = False, axis: int = -1,
               epsilon: float = 1e-5, nonlinearity: bool = True,
               shared_traces: SharedTraces | None = None, **kwargs):
    """``shared_traces``: layers given the same ``SharedTraces`` trace the
    graph once per input signature and call it as one function, instead of
    tracing its ops at every call site; a runtime option for the search's
    throwaway models, not part of the config."""
    super().__init__(momentum=momentum, synchronized=synchronized, axis=axis,
                     epsilon=epsilon, nonlinearity=nonlinearity, **kwargs)
    self.graph = _as_graph(graph).canonical()
    self.groups = layout_lib.validate_groups(groups, layer_name=self._label)
    self.batch_dependent = self.graph.uses_batch_statistics
    self.resolved_groups: int | None = None
    if shared_traces is not None and synchronized:
      raise ValueError(f"{self._label}: shared traces compute batch "
                       "statistics per replica; they cannot be synchronized.")
    self.shared_traces = shared_traces

  def create_variables(self):
    self.resolved_groups = layout_lib.resolve_groups(
        self.groups, self.layout.channels, layer_name=self._label)
    if not self.nonlinearity:
      self.moving_statistics = ("variance",) if self.batch_dependent else ()
    else:
      self.moving_statistics = tuple(
          f"node{i}_{_MOVING_OF_MOMENT[primitives.get(self.graph.node(i).op).moment]}"
          for i in range(len(graph_lib.INITIAL_NODES), self.graph.output + 1)
          if primitives.get(self.graph.node(i).op).uses_batch)
    self.moving_initializers = {
        name: _MOVING_INIT[name.split("_", 1)[-1]]
        for name in self.moving_statistics}
    super().create_variables()
    self.v = {}
    if self.nonlinearity:
      for name, init in (("v0", "zeros"), ("v1", "ones")):
        if self.graph.uses(name):
          self.v[name] = self.add_channel_weight(name, init)

  @property
  def uses_groups(self) -> bool:
    if not self.nonlinearity:
      return not self.batch_dependent
    return any(primitives.get(self.graph.node(i).op).index_set == "whc/g"
               for i in self.graph.used_nodes()
               if i >= len(graph_lib.INITIAL_NODES))

  def normalize_activate(self, x, training, affine):
    x = tf.cast(x, tf.float32)
    if not self.nonlinearity:
      return evonorm.series_normalization(
          self, x, training, affine, batch_dependent=self.batch_dependent,
          groups=self.resolved_groups)
    if self.shared_traces is not None and isinstance(training, bool):
      return affine.apply(self._shared_graph_output(x, training))

    def bwh_statistic(index, primitive, z):
      return self.batch_or_moving(
          training, lambda: self._batch_statistic(index, primitive, z),
          (self._moving_key(index, primitive),))

    v = {name: self.channel_param(w) for name, w in self.v.items()}
    return affine.apply(self._graph_output(
        x, v, bwh_statistic, self.layout, self.resolved_groups))

  def _graph_output(self, x, v, bwh_statistic, layout, groups):
    """The graph's output before the affine. ``v``: ``v0``/``v1`` shaped to
    broadcast; ``bwh_statistic(index, primitive, z)``: the moment a batch
    aggregation node uses (the batch's in training, else the moving one);
    ``layout`` and ``groups``: of ``x`` (its channels may be unknown, -1).

    Every value broadcasts against ``x`` (parameters and statistics have
    size-1 axes), so an elementwise op with an input of ``x``'s shape has
    that shape: only the others are broadcast (each ``BroadcastTo`` adds a
    shape reduction to the backward pass)."""
    values, full = {0: x}, {0}  # full: nodes known to have x's shape
    for i, name in enumerate(graph_lib.INITIAL_NODES[1:], start=1):
      if name == "zero":
        values[i] = tf.zeros((), x.dtype)
      elif name in v:
        values[i] = v[name]

    def as_full(j):
      return values[j] if j in full else tf.broadcast_to(values[j],
                                                          tf.shape(x))

    for index in range(len(graph_lib.INITIAL_NODES), self.graph.output + 1):
      node = self.graph.node(index)
      primitive = primitives.get(node.op)
      inputs = [values[j] for j in node.inputs]
      if not primitive.is_aggregation:
        values[index] = primitive.fn(*inputs, self.epsilon)
        if full.intersection(node.inputs):
          full.add(index)
        continue
      z = as_full(node.inputs[0])
      if primitive.index_set == "bwh":
        value = bwh_statistic(index, primitive, z)[
            self._moving_key(index, primitive)]
        values[index] = value if primitive.moment == "mean" else tf.sqrt(
            value + self.epsilon)
      else:
        values[index] = self._instance_aggregate(primitive, z, layout,
                                                 groups)
    return as_full(self.graph.output)

  @staticmethod
  def _moving_key(index, primitive):
    return f"node{index}_{_MOVING_OF_MOMENT[primitive.moment]}"

  def _batch_statistic(self, index, primitive, z, layout=None):
    """``({moving key: batch moment}, sample count)`` of a ``bwh`` node
    (``layout``: of ``z``, by default the layer's).

    On one replica, the moments over the batch axes at once (a third of
    the ops, forward and backward, of combining per-sample moments, which
    a cross-replica reduction needs). An empty batch then has NaN moments
    where ``stats_lib.batch_moments`` gives 0, harmlessly: its outputs are
    empty, and the moving statistics ignore a batch without samples."""
    layout = layout or self.layout
    if self.cross_replica():
      mean, var, count = stats_lib.batch_moments(
          *stats_lib.instance_moments(z, layout), synchronized=True)
    else:
      mean, var = stats_lib.moments(z, layout.batch_axes)
      count = tf.cast(tf.shape(z)[0], tf.float32)
    return {self._moving_key(index, primitive): {
        "mean": mean, "rms": var + tf.square(mean),
        "std": var}[primitive.moment]}, count

  def _instance_aggregate(self, primitive, z, layout, groups):
    mean, var = stats_lib.instance_moments(z, layout)
    if primitive.index_set != "wh":
      mean, var = stats_lib.group_moments(
          mean, var, layout, 1 if primitive.index_set == "whc" else groups)
    if primitive.moment == "mean":
      return mean
    second = var if primitive.moment == "std" else var + tf.square(mean)
    return tf.sqrt(second + self.epsilon)

  def _shared_graph_output(self, x, training):
    """:meth:`_graph_output` through the function traced for every layer of
    the same ``shared_traces`` with this graph, input rank and channel axis
    (any channel count), groups (if the graph groups channels) and training
    flag; the moving statistics are updated here, from the batch moments it
    returns."""
    # (The canonical graph also fixes ``v`` and the moving statistics.)
    groups = self.resolved_groups if self.uses_groups else None
    key = (self.graph, self.layout.rank, self.layout.channel_axis, groups,
           self.epsilon, training)
    run = self.shared_traces.get(key, lambda: self._trace_graph_output(
        groups, training))
    v = tuple(self.v[name] for name in self.v)
    moving = tuple(self.moving[name] for name in self.moving_statistics)
    y, batch, count = run(x, v, moving)
    if not tf.executing_eagerly():
      y.set_shape(x.shape)  # (the function's channels are unknown)
    if training and batch:
      self.update_moving(dict(zip(self.moving_statistics, batch)), count)
    return y

  def _trace_graph_output(self, groups, training):
    """``(x, v, moving) -> (y, batch moments, count)`` for layers like this
    one, of any channel count (it reads only the graph, rank, channel axis
    and epsilon, which are in the cache key with ``groups`` and
    ``training``); never inlined, so that it is traced and differentiated
    once, whichever layer calls it."""
    layout = layout_lib.TensorLayout(self.layout.rank,
                                     self.layout.channel_axis, channels=-1)
    names = tuple(self.v)

    def run(x, v, moving):
      batch, count = {}, tf.zeros([], tf.float32)

      def statistic(index, primitive, z):
        nonlocal count
        key = self._moving_key(index, primitive)
        if not training:
          return {key: tf.reshape(moving[self.moving_statistics.index(key)],
                                  (1,) + layout.param_shape)}
        value, count = self._batch_statistic(index, primitive, z, layout)
        batch.update(value)
        return value

      v = {name: tf.reshape(w, layout.param_shape)
           for name, w in zip(names, v)}
      y = self._graph_output(x, v, statistic, layout, groups)
      return y, tuple(batch[name] for name in self.moving_statistics
                      if training), count

    return tf.function(run, autograph=False, input_signature=[
        tf.TensorSpec([None] * layout.rank, tf.float32),
        tuple(tf.TensorSpec([None], tf.float32) for _ in names),
        tuple(tf.TensorSpec([None], tf.float32)
              for _ in self.moving_statistics)],
                       experimental_attributes={"_noinline": True})

  def get_config(self):
    config = super().get_config()
    config.update(graph=self.graph.to_dict(), groups=self.groups)
    return config


class SearchedLayerConstructor:
  """A registry entry making ``SearchedNormActivation``s of one graph."""

  def __init__(self, graph):
    self.graph = _as_graph(graph).canonical()
    self.batch_dependent = self.graph.uses_batch_statistics

  def __call__(self, axis: int = -1, epsilon: float = 1e-5,
               nonlinearity: bool = True, groups: int = 32,
               momentum: float = 0.9, synchronized: bool = False,
               center: bool = True, scale: bool = True,
               gamma_initializer="ones", beta_initializer="zeros",
               **keras_kwargs) -> SearchedNormActivation:
    return SearchedNormActivation(
        self.graph, groups=groups, momentum=momentum,
        synchronized=synchronized, axis=axis, epsilon=epsilon,
        nonlinearity=nonlinearity, center=center, scale=scale,
        gamma_initializer=gamma_initializer,
        beta_initializer=beta_initializer, **keras_kwargs)

  def __repr__(self):
    return f"SearchedLayerConstructor({self.graph.formula()!r})"


def register_searched_layer(name: str, graph, *, overwrite: bool = False,
                            aliases: tuple[str, ...] = ()
                            ) -> SearchedLayerConstructor:
  """Makes ``graph`` available everywhere as ``get_norm_activation(name)``."""
  constructor = SearchedLayerConstructor(graph)
  registry.register_norm_activation(name, constructor, aliases=aliases,
                                    overwrite=overwrite)
  return constructor


def load_searched_layers(layers: Mapping[str, Any] | str, *,
                         overwrite: bool = True) -> list[str]:
  """Registers the layers of a search report (``best_layers.json``).

  Args:
    layers: ``{name: graph dict}`` or the path of such a JSON file.

  Returns:
    The registered names.
  """
  if isinstance(layers, str):
    with tf.io.gfile.GFile(layers) as f:
      import json  # pylint: disable=g-import-not-at-top
      layers = json.load(f)
  for name, graph in layers.items():
    register_searched_layer(name, graph, overwrite=overwrite)
  return list(layers)
