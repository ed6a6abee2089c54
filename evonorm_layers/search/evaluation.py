"""Scoring one candidate: the rejection protocols, then proxy training.

Each step cheaper than the next, a candidate is rejected at the first
failure (Section 4.2 of the paper):

1. **probe**: the compiled layer on a fixed random batch; Inf/NaN rejects.
   Its outputs, rounded, are the candidate's functional fingerprint: two
   candidates that compute the same function share one evaluation.
2. **stability**, per anchor: gradient ascent on the weights towards a
   larger gradient norm ``||dL/dtheta||``, up to ``stability_steps`` steps;
   a norm above ``stability_threshold`` (or Inf/NaN) rejects. Its direction
   is exact (second order) or a finite difference of two gradients
   (``config.stability_direction``; see :func:`make_ascent_step`).
3. **quality**, per anchor: ``quality_steps`` training steps; validation
   accuracy below ``quality_threshold`` on any anchor rejects.
4. **training**: the survivors train on to ``train_steps``; their validation
   accuracy per anchor is the fitness.

Stability and quality run anchor by anchor (the first anchor's stability
and quality tests, then the second's, ...): of the candidates a laptop
search tested for stability, 95% of the unstable ones failed on the first
anchor, and a candidate that fails the quality test there is not tested
further. A candidate that produces Inf or NaN anywhere is rejected and
recorded, never a crash; every step's wall time is recorded.

Where the stages run (:class:`Placement`): the first anchor's stability
test, which most candidates fail within a few steps, on an
``AnchorSession`` (each anchor built with ``program.ProgramNormActivation``
and its steps traced once per worker; a candidate only loads its graph into
the layers' variables and resets the weights); everything after it on
models compiled for the candidate (``CompiledAnchor``), whose steps run
about 3x faster than the interpreter's, from the sessions' initial weights:
the other anchors' stability tests run there too, on the gradient their
training then reuses. Their layers call one function per graph and
signature traced for all of the candidate's anchors
(``layer.SharedTraces``), and what TensorFlow registered for them globally
is dropped with them (:func:`forget_custom_gradients`).
``bench/search_placements.py`` runs every stage one way or the other, the
throughput benchmark's points of comparison.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import tensorflow as tf

from evonorm_layers.search import protocols
from evonorm_layers.search import proxy_config
from evonorm_layers.search import proxy_data
from evonorm_layers.search import tensorflow_hygiene
from evonorm_layers.search.graph import LayerGraph
from evonorm_layers.search.layer import SharedTraces
from evonorm_layers.search.protocols import Rejected
from evonorm_layers.search.runners import AnchorSession
from evonorm_layers.search.runners import CompiledAnchor


@dataclasses.dataclass
class Timer:
  seconds: dict = dataclasses.field(default_factory=dict)

  def __call__(self, name):
    timer = self

    class _Span:

      def __enter__(self):
        self.start = time.perf_counter()

      def __exit__(self, *exc):
        timer.seconds[name] = timer.seconds.get(name, 0.0) + (
            time.perf_counter() - self.start)

    return _Span()


class Placement:
  """Where each stage of one candidate runs.

  The first anchor's stability test, which most candidates fail within a
  few steps, on its ``AnchorSession``; every other stage on a
  ``CompiledAnchor`` built for the candidate from the session's initial
  weights (without a stability test, no session: seeded). Subclasses
  override :meth:`on_session` (``bench/search_placements.py``). Sessions
  (anchor -> ``AnchorSession``) outlive the candidate; building one is
  timed as the stage ``setup``, and what it registers with TensorFlow is
  ``kept``.
  """

  def __init__(self, config: proxy_config.ProxyConfig,
               data: proxy_data.ProxyData, sessions: dict, timer: Timer):
    self.config, self.data = config, data
    self.sessions, self.timer = sessions, timer
    self.compiled: dict[str, CompiledAnchor] = {}
    self.traces = SharedTraces()  # the candidate's layer functions
    self.kept: set[str] = set()

  def on_session(self, anchor: str, stage: str) -> bool:
    """Whether ``stage`` runs on ``anchor``'s session (else compiled)."""
    return stage == "stability" and anchor == self.config.anchors[0]

  def runner(self, anchor: str, stage: str):
    """The session or compiled model that runs ``stage`` for ``anchor``."""
    if self.on_session(anchor, stage):
      return self.session(anchor)
    return self._compiled(anchor)

  def _compiled(self, anchor: str) -> CompiledAnchor:
    if anchor not in self.compiled:
      # Weights as the session's, so a stage run there and here agree.
      initial = (self.session(anchor).initial_outside_norm
                 if self.config.stability_steps and self.on_session(
                     self.config.anchors[0], "stability") else None)
      self.compiled[anchor] = CompiledAnchor(anchor, self.config, self.data,
                                             initial, self.traces)
    return self.compiled[anchor]

  def session(self, anchor: str) -> AnchorSession:
    if anchor not in self.sessions:
      with self.timer("setup"):
        before = tensorflow_hygiene.custom_gradient_names()
        self.sessions[anchor] = AnchorSession(anchor, self.config, self.data)
        self.kept |= tensorflow_hygiene.custom_gradient_names() - before
    return self.sessions[anchor]


def evaluate(graph: LayerGraph, config: proxy_config.ProxyConfig,
             data: proxy_data.ProxyData,
             known_probes: frozenset[str] | set[str] = frozenset(),
             sessions: dict[str, AnchorSession] | None = None,
             placement_class: type[Placement] = Placement
             ) -> dict[str, Any]:
  """Runs the protocols and the proxy training for one candidate.

  If the candidate's probe fingerprint is in ``known_probes`` it computes
  the same function as a layer already evaluated: the record is then just
  ``{"status": "cached", "probe": ...}``. ``sessions`` (anchor ->
  ``AnchorSession``) are reused across calls: pass the same dict to
  evaluate many candidates. ``placement_class``: where the stages run.

  Returns a record: ``status`` ("accepted" or "rejected"), ``reason``,
  ``fitness`` (validation accuracy per anchor, accepted only), ``quality``
  (accuracy per anchor after ``quality_steps``), ``stability`` and
  ``seconds`` per stage (``probe``, ``setup``, ``stability``, ``quality``,
  ``training``, ``evaluation`` and ``total``).
  """
  timer = Timer()
  record: dict[str, Any] = {"quality": {}, "stability": {}, "fitness": {}}
  start = time.perf_counter()
  placement = placement_class(config, data,
                              {} if sessions is None else sessions, timer)
  # The models compiled for this candidate die with it; the sessions live on.
  registered_before = tensorflow_hygiene.custom_gradient_names()
  try:
    with timer("probe"):
      record["probe"] = protocols.probe(graph)
    if record["probe"] in known_probes:
      return {"status": "cached", "probe": record["probe"]}
    _run_stages(graph, config, placement, timer, record)
    record.update(status="accepted", reason=None)
  except Rejected as rejection:
    record.update(status="rejected", reason=rejection.reason,
                  rejection=rejection.detail)
  except (tf.errors.InvalidArgumentError, FloatingPointError) as error:
    # e.g. a NaN caught by a numerics check inside TensorFlow.
    record.update(status="rejected", reason="nan",
                  rejection={"error": str(error).splitlines()[0][:200]})
  finally:
    tensorflow_hygiene.forget_custom_gradients(
        tensorflow_hygiene.custom_gradient_names() - registered_before -
        placement.kept)
  # A candidate's cost: what it ran, not the one-off setup of a session.
  timer.seconds["total"] = (time.perf_counter() - start -
                            timer.seconds.get("setup", 0.0))
  record["seconds"] = timer.seconds
  return record


def _run_stages(graph: LayerGraph, config: proxy_config.ProxyConfig,
                placement: Placement, timer: Timer, record: dict):
  """Anchor by anchor, the stability test and the quality test (raising
  ``Rejected``), then the survivor's training on every anchor."""
  for anchor in config.anchors:
    if config.stability_steps:
      run = placement.runner(anchor, "stability")
      with timer("stability"):
        record["stability"][anchor] = run.stability(graph)
    run = placement.runner(anchor, "quality")
    with timer("quality"):
      run.start(graph)
      run.trainer.train_until(config.quality_steps)
    with timer("evaluation"):
      accuracy = record["quality"][anchor] = run.trainer.accuracy()
    if accuracy < config.quality_threshold:
      raise Rejected("quality", {"anchor": anchor, "accuracy": accuracy})
  for anchor in config.anchors:
    trainer = placement.runner(anchor, "training").trainer
    with timer("training"):
      trainer.train_until(config.train_steps)
    with timer("evaluation"):
      record["fitness"][anchor] = trainer.accuracy()
