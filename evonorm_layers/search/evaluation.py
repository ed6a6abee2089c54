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

Where the stages run (``PATHS``; ``bench/search_throughput.py`` measures
each): the first anchor's stability test, which most candidates fail within
a few steps, on an ``AnchorSession`` (each anchor built with
``program.ProgramNormActivation`` and its steps traced once per worker; a
candidate only loads its graph into the layers' variables and resets the
weights); everything after it on models compiled for the candidate
(``CompiledAnchor``), whose steps run about 3x faster than the
interpreter's, from the sessions' initial weights: the other anchors'
stability tests run there too, on the gradient their training then reuses.
Their layers call one function per graph and signature traced for all of
the candidate's anchors (``layer.SharedTraces``), and what TensorFlow
registered for them globally is dropped with them
(:func:`forget_custom_gradients`). ``"sessions"`` and ``"compiled"`` run
every stage one way.
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


PATHS = ("hybrid", "sessions", "compiled")


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


def evaluate(graph: LayerGraph, config: proxy_config.ProxyConfig,
             data: proxy_data.ProxyData,
             known_probes: frozenset[str] | set[str] = frozenset(),
             sessions: dict[str, AnchorSession] | None = None,
             path: str = "hybrid") -> dict[str, Any]:
  """Runs the protocols and the proxy training for one candidate.

  If the candidate's probe fingerprint is in ``known_probes`` it computes
  the same function as a layer already evaluated: the record is then just
  ``{"status": "cached", "probe": ...}``.

  ``path`` (one of ``PATHS``) says where each stage runs: ``"sessions"``
  runs all of them on ``AnchorSession``s; ``"compiled"`` on models built
  and traced for this candidate (``CompiledAnchor``); ``"hybrid"`` (the default) runs the first anchor's stability
  test, which most candidates fail within a few steps, on its session, and
  the rest on compiled models, whose steps run three times faster than the
  interpreter's. ``sessions`` (anchor -> ``AnchorSession``) are reused
  across calls: pass the same dict to evaluate many candidates; missing
  anchors are built and traced into it, and that time is recorded as the
  stage ``setup``.

  Returns a record: ``status`` ("accepted" or "rejected"), ``reason``,
  ``fitness`` (validation accuracy per anchor, accepted only), ``quality``
  (accuracy per anchor after ``quality_steps``), ``stability`` and
  ``seconds`` per stage (``probe``, ``setup``, ``stability``, ``quality``,
  ``training``, ``evaluation`` and ``total``).
  """
  timer = Timer()
  record: dict[str, Any] = {"quality": {}, "stability": {}, "fitness": {}}
  start = time.perf_counter()
  if path not in PATHS:
    raise ValueError(f"Unknown evaluation path {path!r}; use one of "
                     f"{', '.join(PATHS)}.")
  sessions = {} if sessions is None else sessions
  fresh: dict[str, CompiledAnchor] = {}
  traces = SharedTraces()  # the candidate's layer functions, all anchors
  # The models compiled for this candidate die with it; the sessions live on.
  registered_before, kept = tensorflow_hygiene.custom_gradient_names(), set()

  def on_session(anchor, stage):
    if path == "hybrid":
      return stage == "stability" and anchor == config.anchors[0]
    return path == "sessions"

  def runner(anchor, stage):
    """Where ``stage`` runs for ``anchor``: its session or its model
    compiled for the candidate (built on first use)."""
    if not on_session(anchor, stage):
      if anchor not in fresh:
        # Hybrid: from the session's initial weights (without a stability
        # test, no sessions: seeded like "compiled").
        initial = (session(anchor).initial_outside_norm
                   if path == "hybrid" and config.stability_steps else None)
        fresh[anchor] = CompiledAnchor(anchor, config, data, initial,
                                       traces)
      return fresh[anchor]
    return session(anchor)

  def session(anchor):
    if anchor not in sessions:
      with timer("setup"):
        before = tensorflow_hygiene.custom_gradient_names()
        sessions[anchor] = AnchorSession(anchor, config, data)
        kept.update(tensorflow_hygiene.custom_gradient_names() - before)
    return sessions[anchor]

  try:
    with timer("probe"):
      record["probe"] = protocols.probe(graph)
    if record["probe"] in known_probes:
      return {"status": "cached", "probe": record["probe"]}
    # Anchor by anchor, the stability test, then the quality test.
    for anchor in config.anchors:
      if config.stability_steps:
        run = runner(anchor, "stability")
        with timer("stability"):
          record["stability"][anchor] = run.stability(graph)
      run = runner(anchor, "quality")
      with timer("quality"):
        run.start(graph)
        run.trainer.train_until(config.quality_steps)
      with timer("evaluation"):
        accuracy = record["quality"][anchor] = run.trainer.accuracy()
      if accuracy < config.quality_threshold:
        raise Rejected("quality", {"anchor": anchor, "accuracy": accuracy})
    for anchor in config.anchors:
      trainer = runner(anchor, "training").trainer
      with timer("training"):
        trainer.train_until(config.train_steps)
      with timer("evaluation"):
        record["fitness"][anchor] = trainer.accuracy()
    record.update(status="accepted", reason=None)
  except Rejected as rejection:
    record.update(status="rejected", reason=rejection.reason,
                  rejection=rejection.detail)
  except (tf.errors.InvalidArgumentError, FloatingPointError) as error:
    # e.g. a NaN caught by a numerics check inside TensorFlow.
    record.update(status="rejected", reason="nan",
                  rejection={"error": str(error).splitlines()[0][:200]})
  finally:
    tensorflow_hygiene.forget_custom_gradients(tensorflow_hygiene.custom_gradient_names() - registered_before -
                            kept)
  # A candidate's cost: what it ran, not the one-off setup of a session.
  timer.seconds["total"] = (time.perf_counter() - start -
                            timer.seconds.get("setup", 0.0))
  record["seconds"] = timer.seconds
  return record
