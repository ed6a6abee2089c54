"""The throughput benchmark's other placements of a candidate's stages.

The search runs the first anchor's stability test on a traced session and
everything else on models compiled for the candidate
(``evaluation.Placement``). These run every stage one way, so that
``search_throughput.py`` can show what the mix buys, and the tests can
check that where a stage runs does not change its result.
"""

from __future__ import annotations

from evonorm_layers.search import evaluation


class EverythingOnSessions(evaluation.Placement):
  """Every stage on the anchors' traced sessions (candidates interpreted)."""

  def on_session(self, anchor: str, stage: str) -> bool:
    return True


class EverythingCompiled(evaluation.Placement):
  """Every stage on models built and traced for the candidate."""

  def on_session(self, anchor: str, stage: str) -> bool:
    return False


PLACEMENTS = {"hybrid": evaluation.Placement,
              "sessions": EverythingOnSessions,
              "compiled": EverythingCompiled}
