"""What a search reports: found layers exclude seeds and their equivalents,
progress can only rise, no plot is drawn empty, rejections are counted by
the stage that made them (synthetic records; no training)."""

import json
import os

import pytest

from evonorm_layers.search import report
from evonorm_layers.search.known_layers import KNOWN_GRAPHS

ANCHORS = ["resnet", "mobilenet"]
CONFIG = {"algorithm": "evolution", "criterion": "pareto", "population": 4,
          "tournament": 2, "batch_independent": False,
          "seed_layers": ["bn_relu", "evonorm_b0"],
          "proxy": {"anchors": ANCHORS}}


def _record(i, origin, status="accepted", fitness=None, graph="evonorm_s1",
            probe=None, reason=None, rejection=None, **extra):
  g = KNOWN_GRAPHS[graph]
  record = {"id": i, "origin": origin, "status": status, "graph": g.to_dict(),
            "formula": g.formula(), "fingerprint": g.fingerprint(),
            "probe": probe or f"probe{i}", "reason": reason,
            "rejection": rejection, "seconds": {"total": 1.0},
            "cached_from": None}
  if fitness is not None:
    record["fitness"] = dict(zip(ANCHORS, fitness))
  record.update(extra)
  return record


def _baseline(name, fitness, probe):
  g = KNOWN_GRAPHS[name]
  return {"layer": name, "status": "accepted", "fitness": dict(zip(
      ANCHORS, fitness)), "probe": probe, "fingerprint": g.fingerprint(),
          "formula": g.formula(), "graph": g.to_dict()}


def _records():
  return [
      # The warm start's seeds: accepted, and the best scores of the run.
      _record(0, "seed", fitness=(0.90, 0.90), graph="bn_relu",
              probe="p_bn"),
      _record(1, "seed", fitness=(0.88, 0.88), graph="evonorm_b0",
              probe="p_b0"),
      # A mutation that computes what EvoNorm-S0 (a baseline) computes.
      _record(2, "seed_mutation", fitness=(0.95, 0.95), graph="evonorm_s1",
              probe="p_s0"),
      # Rejections at three stages.
      _record(3, "seed_mutation", status="rejected", reason="quality",
              rejection={"stage": "probe", "detail": "constant in x"}),
      _record(4, "seed_mutation", status="rejected", reason="stability",
              rejection={"steps": 2, "grad_norm": 1e9}),
      _record(5, "mutation", status="rejected", reason="quality",
              rejection={"anchor": "resnet", "accuracy": 0.1}),
      # Found layers: a worse one first, then a better one.
      _record(6, "mutation", fitness=(0.70, 0.60), graph="evonorm_s2"),
      _record(7, "mutation", status="rejected", reason="nan",
              rejection={"stage": "training", "step": 20}),
      _record(8, "mutation", fitness=(0.80, 0.82), graph="frn_tlu"),
      _record(9, "mutation", fitness=(0.50, 0.50), graph="rs_rej"),
  ]


BASELINES = {"bn_relu": _baseline("bn_relu", (0.90, 0.90), "p_bn"),
             "evonorm_s0": _baseline("evonorm_s0", (0.93, 0.93), "p_s0")}


def test_found_layers_exclude_seeds_and_their_equivalents():
  records = _records()
  found = report.found(records, list(BASELINES.values()))
  assert [r["id"] for r in found] == [6, 8, 9]
  assert [r["id"] for r in report.best(records, 2,
                                       list(BASELINES.values()))] == [8, 6]
  # Without the baselines, the S0-equivalent mutation counts as found.
  assert [r["id"] for r in report.found(records)] == [2, 6, 8, 9]


def test_progress_is_the_best_found_so_far():
  xs, ys = report.progress_curve(_records(), list(BASELINES.values()))
  assert xs == [7, 8, 9, 10]  # from the first found layer on
  assert ys == pytest.approx([0.65, 0.65, 0.81, 0.81])
  assert all(a <= b for a, b in zip(ys, ys[1:]))


def test_rejections_are_counted_by_stage():
  stages = [report.rejection_stage(r) for r in _records()
            if r["status"] == "rejected"]
  assert stages == ["probe", "stability", "quality", "training"]


def test_report_with_found_layers(tmp_path):
  path = report.write_report(str(tmp_path), CONFIG, _records(),
                             baselines=BASELINES)
  text = open(path).read()
  assert ("accepted: 6, of which 3 are found layers (not a seed, and not "
          "equivalent to a seed or baseline); rejected: 1 at the probe "
          "stage, 1 at the stability stage, 1 at the quality stage, 1 at "
          "the training stage") in text, text
  with open(tmp_path / "best_layers.json") as f:
    best = json.load(f)
  fingerprints = {KNOWN_GRAPHS[n].fingerprint()
                  for n in ("frn_tlu", "evonorm_s2", "rs_rej")}
  assert set(best) == {f"searched_{f}" for f in fingerprints}
  for name in ("figure6_progress.png", "pareto_front.png"):
    assert os.path.getsize(tmp_path / name) > 0
    assert f"]({name})" in text
  # No random layer was trained: no Figure 2, and the report says why.
  assert not os.path.exists(tmp_path / "figure2_random_layers.png")
  assert ("No random layers' accuracy plot: no random layer was trained."
          in text)


def test_report_of_a_search_that_found_nothing(tmp_path):
  records = [r for r in _records() if r["id"] < 6]
  # A plot from an earlier report of the same directory is not left behind.
  (tmp_path / "pareto_front.png").write_bytes(b"old")
  path = report.write_report(str(tmp_path), CONFIG, records,
                             baselines=BASELINES)
  text = open(path).read()
  assert "of which 0 are found layers" in text
  assert "**No layer was found yet**" in text
  assert "No search progress plot: no layer has been found yet." in text
  assert "No Pareto front plot: no layer has been found yet." in text
  for name in ("figure6_progress.png", "pareto_front.png"):
    assert not os.path.exists(tmp_path / name)
  with open(tmp_path / "best_layers.json") as f:
    assert json.load(f) == {}
