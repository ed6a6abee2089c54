r"""Throughput of the layer search and what its rejection protocols save.

Runs the real search machinery (``controller.Search`` on Ray, one CPU per
worker) as random search with rejection over ``--random_layers`` random
layers, then evaluates the paper's layers (``--reference_layers``, which
pass the protocols) through the same workers to measure the cost of a full
evaluation on this machine. Prints:

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

  python bench/search_throughput.py                       # 100 random layers
  python bench/search_throughput.py --random_layers=200 --workers=8 \
      --train_steps=2000                                  # a bigger machine
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from evonorm_layers.search import controller  # noqa: E402
from evonorm_layers.search import proxies  # noqa: E402
from evonorm_layers.search import store as store_lib  # noqa: E402
from evonorm_layers.search.known_layers import KNOWN_GRAPHS  # noqa: E402

_PROXY = proxies.ProxyConfig()
_RANDOM = flags.DEFINE_integer("random_layers", 100,
                               "Random layers to evaluate.", lower_bound=1)
_REFERENCES = flags.DEFINE_list(
    "reference_layers", ["evonorm_b0", "evonorm_s0"],
    f"Known layers evaluated in full; among {sorted(KNOWN_GRAPHS)}.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Ray workers (one CPU each).",
                                lower_bound=1)
_BATCH_INDEPENDENT = flags.DEFINE_bool(
    "batch_independent", False, "Random layers without batch aggregations.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random layers.")
_DATASET = flags.DEFINE_enum("dataset", _PROXY.dataset,
                             ["auto", "cifar10", "digits"], "Proxy dataset.")
_ANCHORS = flags.DEFINE_list("anchors", list(_PROXY.anchors),
                             "Anchor architectures.")
_QUALITY_STEPS = flags.DEFINE_integer("quality_steps", _PROXY.quality_steps,
                                      "Steps of the quality protocol.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", _PROXY.train_steps,
                                    "Steps of a full proxy training.")
_STABILITY_STEPS = flags.DEFINE_integer(
    "stability_steps", _PROXY.stability_steps, "Steps of the stability test.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Keep the search's log here (default: a temporary "
    "directory).")
_JSON = flags.DEFINE_string("json_output", None, "Also write results here.")

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


def _evaluate_references(evaluator, names, proxy):
  refs = {evaluator.submit({"id": -1 - i, "graph": KNOWN_GRAPHS[name]
                            .to_dict()}, proxy, []): name
          for i, name in enumerate(names)}
  records = []
  while refs:
    ref = evaluator.wait_one(refs)
    name = refs.pop(ref)
    records.append({**evaluator.result(ref), "layer": name})
  return records


def main(argv):
  del argv
  unknown = sorted(set(_REFERENCES.value) - set(KNOWN_GRAPHS))
  if unknown:
    raise app.UsageError(f"Unknown --reference_layers {unknown}; choose among "
                         f"{sorted(KNOWN_GRAPHS)}.")
  proxy = dataclasses.replace(
      _PROXY, dataset=_DATASET.value, anchors=tuple(_ANCHORS.value),
      quality_steps=_QUALITY_STEPS.value, train_steps=_TRAIN_STEPS.value,
      stability_steps=_STABILITY_STEPS.value, seed=_SEED.value)
  config = controller.SearchConfig(
      algorithm="random", max_candidates=_RANDOM.value,
      batch_independent=_BATCH_INDEPENDENT.value, seed=_SEED.value,
      proxy=proxy)
  output_dir = _OUTPUT_DIR.value or tempfile.mkdtemp(prefix="search_bench_")
  store = store_lib.SearchStore(output_dir)
  store.create(config.to_dict())

  evaluator = controller.RayEvaluator(_WORKERS.value)
  try:
    start = time.perf_counter()
    random_records = controller.Search(config, store, evaluator,
                                       _WORKERS.value).run()
    wall = time.perf_counter() - start
    references = _evaluate_references(evaluator, _REFERENCES.value,
                                      proxy.to_dict())
  finally:
    evaluator.shutdown()
  results = summarize(random_records, references, wall, _WORKERS.value)
  results["reference_layers"] = {
      r["layer"]: {"status": r["status"], "seconds": r["seconds"]["total"],
                   "fitness": r.get("fitness")} for r in references}
  results["proxy"] = proxy.to_dict()
  results["log"] = store.path(store_lib.LOG)

  print(f"\n{results['random_layers']} random layers "
        f"({results['cache_hits']} cache hits) on {_WORKERS.value} workers, "
        f"proxy: {', '.join(proxy.anchors)}, quality {proxy.quality_steps} / "
        f"full {proxy.train_steps} steps, stability up to "
        f"{proxy.stability_steps} steps; log: {results['log']}\n")
  rows = [
      ("candidates per core-hour (wall time of the search)",
       f"{results['candidates_per_core_hour_wall']:.0f}"),
      ("candidates per core-hour (summed evaluation time)",
       f"{results['candidates_per_core_hour_evaluation']:.0f}"),
      ("median rejected candidate (s)", f"{results['rejected_median_s']:.2f}"),
      (f"median full evaluation (s, {results['full_evaluations']} layers)",
       f"{results['full_evaluation_median_s']:.1f}"),
      ("rejected / full (median cost)", f"{results['rejected_over_full']:.4f}"),
      ("search speed-up from rejection",
       f"{results['search_speedup_from_rejection']:.1f}x"),
      (f"random layers rejected by stability within {EARLY_STEPS} steps",
       f"{results['stability_rejected_within_5_steps']:.0%}"),
      ("... of those that reached the stability test",
       f"{results['stability_rejected_within_5_steps_of_tested']:.0%}"),
  ]
  print("| measure | value |\n|---|---:|")
  for name, value in rows:
    print(f"| {name} | {value} |")
  print("\n| where random layers ended | count | median cost (s) | "
        "cost vs full evaluation |\n|---|---:|---:|---:|")
  for outcome, o in results["outcomes"].items():
    print(f"| {outcome} | {o['count']} | {o['median_s']:.2f} | "
          f"{o['over_full']:.4f} |")
  print("\n| reference layer | status | seconds | fitness |\n|---|---|---:|---|")
  for name, r in results["reference_layers"].items():
    fitness = ", ".join(f"{a} {v:.3f}" for a, v in (r["fitness"] or {}).items())
    print(f"| {name} | {r['status']} | {r['seconds']:.1f} | {fitness} |")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
