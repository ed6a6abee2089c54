r"""Throughput of the layer search, where a candidate's time goes, and what
the rejection protocols save.

Runs the real search machinery (``controller.Search`` on Ray, one CPU per
worker) as random search with rejection over ``--random_layers`` random
layers, then evaluates the paper's layers (``--reference_layers``, which
pass the protocols, each ``--reference_rounds`` times, side by side on the
workers) through the same workers to measure the cost of a full
evaluation on this machine; once per placement of the stages
(``--placements``, ``search_placements.PLACEMENTS``): ``hybrid`` (the
search's: the first anchor's stability test on an anchor traced once per
worker, the rest compiled for the candidate), ``sessions`` (every stage on
the traced anchors, candidates interpreted) and ``compiled`` (a model built
and traced per candidate, no interpreter), side by side. Prints, per
placement:

* candidates evaluated per core-hour, from the wall time of the search loop
  (``workers`` cores; Ray start-up excluded, worker start-up included) and
  from the summed per-candidate evaluation times;
* the median cost of a rejected candidate relative to a fully evaluated one,
  and the speed-up rejection gives the search: the cost of fully training
  every candidate over what the search actually spent (the paper: "up to two
  orders of magnitude");
* the fraction of random layers the stability test rejects within 5
  gradient-ascent steps (the paper: "gradients of many layers are forced to
  quickly blow up in less than 5 steps"), and where every random layer ended.

* the median seconds per stage (probe, stability, quality, training,
  evaluation) of rejected and accepted candidates, and the one-off setup.

  python bench/search_throughput.py                 # laptop preset, 100 layers
  python bench/search_throughput.py --preset=cluster --random_layers=200 \
      --workers=8 --placements=hybrid                   # a bigger machine
"""

from __future__ import annotations

import collections
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from evonorm_layers.search import controller  # noqa: E402
from evonorm_layers.search import proxy_flags  # noqa: E402
from evonorm_layers.search import report  # noqa: E402
from evonorm_layers.search import store as store_lib  # noqa: E402
from evonorm_layers.search.known_layers import KNOWN_GRAPHS  # noqa: E402
import bench_flags  # noqa: E402  (bench/)
import search_placements  # noqa: E402  (bench/)
from search_placements import PLACEMENTS  # noqa: E402
import timing  # noqa: E402

FLAGS = flags.FLAGS

_RANDOM = flags.DEFINE_integer("random_layers", 100,
                               "Random layers to evaluate.", lower_bound=1)
_REFERENCES = flags.DEFINE_list(
    "reference_layers", ["evonorm_b0", "evonorm_s0"],
    f"Known layers evaluated in full; among {sorted(KNOWN_GRAPHS)}.")
_REFERENCE_ROUNDS = flags.DEFINE_integer(
    "reference_rounds", 3, "Times each reference layer is evaluated (all "
    "submitted at once, so the workers evaluate them side by side, as in a "
    "search); the full evaluation's median is over all of them.",
    lower_bound=1)
_WORKERS = flags.DEFINE_integer("workers", 2, "Ray workers (one CPU each).",
                                lower_bound=1)
_BATCH_INDEPENDENT = flags.DEFINE_bool(
    "batch_independent", False, "Random layers without batch aggregations.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random layers.")
_PLACEMENTS = flags.DEFINE_list(
    "placements", list(PLACEMENTS), "Where candidates' stages run: "
    "'sessions' (anchors built and traced once per "
    "worker, graphs interpreted), 'compiled' (a model built and traced per "
    "candidate, no interpreter) and 'hybrid' (the first anchor's stability "
    "test on sessions, the rest compiled); the same random layers for each.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Keep the searches' logs here (default: a temporary "
    "directory).")
_JSON = flags.DEFINE_string("json_output", None, "Also write results here.")
proxy_flags.define()

EARLY_STEPS = 5


def _median(values):
  return statistics.median(values) if values else float("nan")


def _outcome(record) -> str:
  """Where a candidate ended: accepted, or the protocol that rejected it."""
  if record["status"] == "accepted":
    return "accepted (full evaluation)"
  if (record.get("rejection") or {}).get("stage") == "probe":
    return f"rejected at the probe ({record['reason']})"
  return f"rejected by {record['reason']}"


def summarize(random_records, reference_records, wall_seconds, workers):
  """The benchmark's figures from the records of one run."""
  fresh = [r for r in random_records if r.get("cached_from") is None]
  rejected = [r for r in fresh if r["status"] == "rejected"]
  full = [r for r in fresh + reference_records if r["status"] == "accepted"]
  evaluation_seconds = sum(r["seconds"]["total"] for r in fresh)
  full_cost = _median([r["seconds"]["total"] for r in full])
  by_outcome = collections.defaultdict(list)
  for r in fresh:
    by_outcome[_outcome(r)].append(r["seconds"]["total"])
  stability_early = [r for r in rejected if r["reason"] == "stability" and
                     r["rejection"]["steps"] <= EARLY_STEPS]
  tested = [r for r in fresh if r.get("stability") or
            r.get("reason") == "stability"]
  return {
      "random_layers": len(random_records),
      "cache_hits": len(random_records) - len(fresh),
      "workers": workers,
      "wall_seconds": wall_seconds,
      "candidates_per_core_hour_wall":
          len(random_records) * 3600 / (wall_seconds * workers),
      "candidates_per_core_hour_evaluation":
          len(fresh) * 3600 / evaluation_seconds,
      "rejected_median_s": _median([r["seconds"]["total"] for r in rejected]),
      # The target: a candidate that reaches the stability test and
      # fails it (most rejected candidates fail at the probe, for free).
      "stability_rejected_median_s": _median([
          r["seconds"]["total"] for r in rejected
          if r["reason"] == "stability"]),
      "full_evaluation_median_s": full_cost,
      "full_evaluations": len(full),
      "rejected_over_full": _median([r["seconds"]["total"]
                                     for r in rejected]) / full_cost,
      # What training every candidate fully would cost, over what was spent.
      "search_speedup_from_rejection":
          len(fresh) * full_cost / evaluation_seconds,
      "stability_rejected_within_5_steps": len(stability_early) / len(fresh),
      "stability_rejected_within_5_steps_of_tested":
          len(stability_early) / len(tested) if tested else float("nan"),
      "outcomes": {name: {"count": len(costs), "median_s": _median(costs),
                          "over_full": _median(costs) / full_cost}
                   for name, costs in sorted(by_outcome.items())},
  }


def _evaluate_references(evaluator, names, proxy, rounds):
  """Each reference layer ``rounds`` times, all submitted at once."""
  pending = {}
  for round_ in range(rounds):
    for name in names:
      candidate = {"id": -1 - len(pending), "graph": KNOWN_GRAPHS[name]
                   .to_dict()}
      pending[evaluator.submit(candidate, proxy, [])] = (name, round_)
  records = []
  while pending:
    ref = evaluator.wait_one(pending)
    name, round_ = pending.pop(ref)
    records.append({**evaluator.result(ref), "layer": name, "round": round_})
  return records


def _by_layer(references):
  """Per reference layer: its status, median seconds over its rounds (and
  each round's), the stages of its median round and its fitness."""
  layers = {}
  for name in dict.fromkeys(r["layer"] for r in references):
    runs = sorted((r for r in references if r["layer"] == name),
                  key=lambda r: r["seconds"]["total"])
    middle = runs[(len(runs) - 1) // 2]
    layers[name] = {
        "status": middle["status"],
        "seconds": _median([r["seconds"]["total"] for r in runs]),
        "rounds": [r["seconds"]["total"] for r in runs],
        "stages": middle["seconds"], "fitness": middle.get("fitness")}
  return layers


def run_placement(placement, proxy, output_dir):
  """The random search and the reference layers, one placement."""
  from ray import cloudpickle  # pylint: disable=g-import-not-at-top
  # Ray's workers cannot import bench/: they get the classes by value.
  cloudpickle.register_pickle_by_value(search_placements)
  config = controller.SearchConfig(
      algorithm="random", max_candidates=_RANDOM.value,
      batch_independent=_BATCH_INDEPENDENT.value, seed=_SEED.value,
      proxy=proxy)
  store = store_lib.SearchStore(output_dir)
  store.create(config.to_dict())
  evaluator = controller.RayEvaluator(_WORKERS.value,
                                      placement_class=PLACEMENTS[placement])
  try:
    start = time.perf_counter()
    random_records = controller.Search(config, store, evaluator,
                                       _WORKERS.value).run()
    wall = time.perf_counter() - start
    references = _evaluate_references(evaluator, _REFERENCES.value,
                                      proxy.to_dict(),
                                      _REFERENCE_ROUNDS.value)
  finally:
    evaluator.shutdown()
  results = summarize(random_records, references, wall, _WORKERS.value)
  results["stage_costs"] = report.rejection_costs(random_records + [
      r for r in references if r["status"] == "accepted"])
  results["reference_layers"] = _by_layer(references)
  results["log"] = store.path(store_lib.LOG)
  return results


def main(argv):
  del argv
  with bench_flags.checked():
    unknown = sorted(set(_REFERENCES.value) - set(KNOWN_GRAPHS))
    if unknown:
      raise app.UsageError(f"Unknown --reference_layers {unknown}; choose "
                           f"among {sorted(KNOWN_GRAPHS)}.")
    bad = sorted(set(_PLACEMENTS.value) - set(PLACEMENTS))
    if bad:
      raise app.UsageError(f"Unknown --placements {bad}; use "
                           f"{', '.join(PLACEMENTS)}.")
  proxy = proxy_flags.proxy_config(_SEED.value)
  root = _OUTPUT_DIR.value or tempfile.mkdtemp(prefix="search_bench_")
  all_results = {"proxy": proxy.to_dict(), "preset": FLAGS.preset}
  for placement in _PLACEMENTS.value:
    all_results[placement] = run_placement(placement, proxy,
                                           os.path.join(root, placement))
  print(f"\n{_RANDOM.value} random layers and {', '.join(_REFERENCES.value)}"
        f" on {_WORKERS.value} workers; preset {FLAGS.preset} "
        f"{proxy_flags.given() or ''}: anchors {', '.join(proxy.anchors)}, "
        f"quality {proxy.quality_steps} / full {proxy.train_steps} steps, "
        f"stability up to {proxy.stability_steps} steps\n")
  placements = _PLACEMENTS.value
  measures = [
      ("candidates per core-hour (wall time of the search)",
       "candidates_per_core_hour_wall", "{:.0f}"),
      ("candidates per core-hour (summed evaluation time)",
       "candidates_per_core_hour_evaluation", "{:.0f}"),
      ("median rejected candidate (s)", "rejected_median_s", "{:.2f}"),
      ("median candidate rejected by the stability test (s)",
       "stability_rejected_median_s", "{:.2f}"),
      ("median full evaluation (s)", "full_evaluation_median_s", "{:.1f}"),
      ("rejected / full (median cost)", "rejected_over_full", "{:.4f}"),
      ("search speed-up from rejection", "search_speedup_from_rejection",
       "{:.1f}x"),
      (f"random layers rejected by stability within {EARLY_STEPS} steps",
       "stability_rejected_within_5_steps", "{:.0%}"),
  ]
  print("| measure | " + " | ".join(placements) + " |\n|---|" +
        "---:|" * len(placements))
  for label, key, form in measures:
    print(f"| {label} | " + " | ".join(
        _format(form, all_results[p][key]) for p in placements) + " |")
  for placement in placements:
    costs = all_results[placement]["stage_costs"]
    print(f"\nMedian seconds per stage, {placement} (one-off setup per worker and"
          f" anchor set: {_format('{:.1f}', costs['setup'])} s):\n")
    print("\n".join(report.stage_table(costs)))
  for placement in placements:
    print(f"\n| where random layers ended ({placement}) | count | median cost (s)"
          " | cost vs full evaluation |\n|---|---:|---:|---:|")
    for outcome, o in all_results[placement]["outcomes"].items():
      print(f"| {outcome} | {o['count']} | {o['median_s']:.2f} | "
            f"{_format('{:.4f}', o['over_full'])} |")
  print(f"\n| reference layer | placement | status | median seconds "
        f"({_REFERENCE_ROUNDS.value} rounds) | fitness |\n"
        "|---|---|---|---:|---|")
  for placement in placements:
    for name, r in all_results[placement]["reference_layers"].items():
      fitness = ", ".join(f"{a} {v:.3f}"
                          for a, v in (r["fitness"] or {}).items())
      print(f"| {name} | {placement} | {r['status']} | {r['seconds']:.1f} | "
            f"{fitness} |")
  timing.write_json(_JSON.value, all_results)
  sys.stdout.flush()


def _format(form, value):
  if value is None or (isinstance(value, float) and value != value):
    return "-"
  return form.format(value)


if __name__ == "__main__":
  bench_flags.run(main)
