"""The timing loop every speed benchmark shares.

Each layer's step is built and warmed up first (tracing and the first
call's allocations are not timed); then every layer runs a few steps per
round, the layers taking turns round after round, so that a drift of the
machine (thermal, other load) reaches every layer alike. Figures are
medians, and ratios are taken against the baseline timed in the same run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Callable, Mapping

import numpy as np
from tqdm import tqdm


def timed(name: str, step: Callable[[], object]) -> Callable[[], float]:
  """``step`` (returning a loss) as a function returning its seconds; a
  non-finite loss stops the benchmark rather than timing garbage."""

  def run() -> float:
    start = time.perf_counter()
    loss = np.asarray(step())
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(loss)):
      raise FloatingPointError(f"{name}: non-finite loss {loss}")
    return seconds

  return run


def build_and_warm_up(names, build: Callable[[str], Callable[[], object]],
                      warmup: int = 1, desc: str = "build + warm up"
                      ) -> dict[str, Callable[[], object]]:
  """``build(name)`` for each layer, each called ``warmup`` times."""
  steps = {}
  for name in tqdm(names, desc=desc, file=sys.stderr):
    steps[name] = build(name)
    for _ in range(warmup):
      steps[name]()
  return steps


def interleaved(runs: Mapping[str, Callable[[], float]], rounds: int,
                steps_per_round: int, desc: str = "timing rounds"
                ) -> dict[str, list[float]]:
  """Seconds of every timed step of each layer: ``runs[name]()`` runs one
  step and returns its seconds (see :func:`timed`)."""
  times = {name: [] for name in runs}
  for _ in tqdm(range(rounds), desc=desc, file=sys.stderr):
    for name, run in runs.items():
      for _ in range(steps_per_round):
        times[name].append(run())
  return times


def medians_and_ratios(times: Mapping[str, list[float]], baseline: str
                       ) -> dict[str, tuple[float, float]]:
  """``{name: (median seconds, median / the baseline's median)}``."""
  base = statistics.median(times[baseline])
  return {name: (statistics.median(t), statistics.median(t) / base)
          for name, t in times.items()}


def write_json(path: str | None, payload) -> None:
  """The benchmark's results as JSON at ``path`` (if given), written whole
  under a temporary name first so a killed run leaves no torn file."""
  if not path:
    return
  temporary = f"{path}.tmp"
  with open(temporary, "w") as f:
    json.dump(payload, f, indent=1, default=str)
  os.replace(temporary, path)
