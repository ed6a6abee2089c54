"""Where a candidate's stages run: an ``AnchorSession`` (the anchor built
once with ``program.ProgramNormActivation`` and its steps traced once per
worker; a candidate only loads its graph into the layers' variables) or a
``CompiledAnchor`` (a model built with the candidate's
``SearchedNormActivation`` and traced for it, whose steps run about 3x
faster). Both offer ``start(graph)``, ``stability(graph)`` and a
``trainer`` (:class:`~evonorm_layers.search.proxy_training.ProxyTrainer`).
"""

from __future__ import annotations

import re

import tensorflow as tf
import tf_keras

from evonorm_layers import base
from evonorm_layers.search import known_layers
from evonorm_layers.search import program
from evonorm_layers.search import protocols
from evonorm_layers.search import anchors
from evonorm_layers.search import proxy_config
from evonorm_layers.search import proxy_data
from evonorm_layers.search import tensorflow_hygiene
from evonorm_layers.search.graph import LayerGraph
from evonorm_layers.search.layer import SearchedNormActivation
from evonorm_layers.search.layer import SharedTraces
from evonorm_layers.search.proxy_training import ProxyTrainer


def searched_norm_maker(graph: LayerGraph, config: proxy_config.ProxyConfig,
                 shared_traces: SharedTraces | None = None):
  """Makes the candidate's layers; with ``shared_traces`` (one for all
  anchors of an evaluation) they call functions traced once
  (``layer.SharedTraces``)."""
  def make_norm(nonlinearity: bool = True):
    return SearchedNormActivation(graph, groups=config.groups,
                                  momentum=config.momentum,
                                  nonlinearity=nonlinearity,
                                  shared_traces=shared_traces)
  return make_norm


def _weights_outside_norm_layers(model) -> list[tf.Variable]:
  """The model's weights, in order, less its norm-activation layers'
  (which differ between interpreted and compiled layers)."""
  inside = {id(v) for layer in model.submodules
            if isinstance(layer, base.NormActivation) for v in layer.weights}
  return [v for v in model.weights if id(v) not in inside]


class AnchorSession:
  """One anchor, built and traced once, that evaluates any candidate.

  The anchor is built with ``ProgramNormActivation`` at every norm site;
  its training step, evaluation and stability step are traced on creation
  (the stage ``setup`` of :func:`evaluate`). :meth:`start` loads a
  candidate's graph and puts every weight and the optimizer back to their
  initial values, so each candidate trains from the same initialization,
  on the same batches, as a freshly built model would, without building or
  tracing anything.
  """

  WARM_UP = known_layers.KNOWN_GRAPHS["bn_relu"]

  def __init__(self, anchor: str, config: proxy_config.ProxyConfig,
               data: proxy_data.ProxyData):
    tensorflow_hygiene.disable_graph_optimizations()
    self.anchor, self.config = anchor, config
    tf_keras.utils.set_random_seed(config.seed)

    def make_norm(nonlinearity: bool = True):
      return program.ProgramNormActivation(groups=config.groups,
                                           momentum=config.momentum,
                                           nonlinearity=nonlinearity)

    self.model = anchors.build_model(anchor, make_norm, config,
                                     data.num_classes)
    self.initial_weights = self.model.get_weights()
    self.initial_outside_norm = [
        w.numpy() for w in _weights_outside_norm_layers(self.model)]
    self.trainer = ProxyTrainer(self.model, data, config)
    self.ascend = (protocols.make_ascent_step(self.model, data, config,
                                    self.trainer.gradients)
                   if config.stability_steps else None)
    # Trace everything now, on a known layer, so candidates only run.
    self.start(self.WARM_UP)
    for run in (lambda: self.trainer.train_until(1), self.trainer.accuracy,
                self.ascend):
      if run is not None:
        run()

  def start(self, graph: LayerGraph):
    """Loads ``graph``; weights, statistics and optimizer to step 0."""
    self.model.set_weights(self.initial_weights)
    program.load_program(self.model, graph)
    self.trainer.reset()

  def stability(self, graph: LayerGraph) -> dict:
    self.start(graph)
    return protocols.stability_test(self.model, self.trainer.data, self.config,
                          self.ascend)


def check_anchors(config: proxy_config.ProxyConfig, data: proxy_data.ProxyData):
  """Builds each user anchor once with BN-ReLU at its norm sites and runs
  one stability step, so that a builder the search cannot use is a clear
  error before any work starts (e.g. an op without a second derivative,
  which the exact stability direction needs)."""
  for anchor in config.anchors:
    if ":" not in anchor:
      continue
    model = anchors.build_model(
        anchor,
        searched_norm_maker(known_layers.KNOWN_GRAPHS["bn_relu"], config),
        config, data.num_classes)
    if config.stability_steps:
      try:
        protocols.make_ascent_step(model, data, config)()
      except Exception as e:  # pylint: disable=broad-except
        # (TensorFlow's LookupError arrives wrapped in a StagingError.)
        missing = re.search(r"gradient registry has no entry for: (\w+)",
                            str(e))
        if not missing:
          raise
        op = missing.group(1)
        raise ValueError(
            f"Anchor {anchor!r} has an op without a second derivative ({op})"
            ", which the exact stability test differentiates: replace it "
            "(e.g. UpSampling2D by Conv2DTranspose), or pass "
            "--stability_direction=finite_difference (first derivatives "
            "only) or --stability_steps=0."
        ) from None
  tf_keras.backend.clear_session()


class CompiledAnchor:
  """A model built with the compiled ``SearchedNormActivation`` for one
  candidate, its steps traced for it: the stability test, then (from the
  same initial weights) the quality test and the training run on it. The
  hybrid path trains here; the compiled path runs every stage here (no
  interpreter) and is the throughput benchmark's baseline."""

  def __init__(self, anchor: str, config: proxy_config.ProxyConfig,
               data: proxy_data.ProxyData, initial: list | None = None,
               shared_traces: SharedTraces | None = None):
    """``initial``: the weights outside norm-activation layers to start
    from (``AnchorSession.initial_outside_norm``), instead of seeding.
    ``shared_traces``: the candidate's traced layer functions, shared by
    its anchors (``layer.SharedTraces``; by default the anchor's own)."""
    self.anchor, self.config, self.data = anchor, config, data
    self.initial = initial
    self.shared_traces = shared_traces or SharedTraces()
    self.trainer = self.graph = self.initial_weights = None

  def _model(self, graph):
    if self.initial is None:
      tf_keras.backend.clear_session()
      tf_keras.utils.set_random_seed(self.config.seed)
    model = anchors.build_model(
        self.anchor,
        searched_norm_maker(graph, self.config, self.shared_traces),
        self.config, self.data.num_classes)
    if self.initial is not None:
      # Seeding would clear TensorFlow's kernel cache, and every traced
      # function of the worker's sessions would be instantiated again
      # (seconds each): the session's initial weights are copied instead.
      weights = _weights_outside_norm_layers(model)
      if [tuple(w.shape) for w in weights] != [
          w.shape for w in self.initial]:
        raise ValueError(f"Anchor {self.anchor!r} builds different weights "
                         "each time; every candidate starts from the same "
                         "initial weights, so the anchor's builder must "
                         "create the same layers on every call.")
      for variable, value in zip(weights, self.initial):
        variable.assign(value)
    return model

  def start(self, graph: LayerGraph):
    """The model for ``graph`` (built on first use) at its initial weights,
    the optimizer at step 0."""
    if self.graph is not graph:
      model = self._model(graph)
      self.graph, self.initial_weights = graph, model.get_weights()
      self.trainer = ProxyTrainer(model, self.data, self.config)
    else:
      self.trainer.model.set_weights(self.initial_weights)
      self.trainer.reset()

  def stability(self, graph: LayerGraph) -> dict:
    self.start(graph)
    ascend = protocols.make_ascent_step(self.trainer.model, self.data,
                                        self.config, self.trainer.gradients)
    return protocols.stability_test(self.trainer.model, self.data,
                                    self.config, ascend)
