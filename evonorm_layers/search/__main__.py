r"""Runs a layer search: ``python -m evonorm_layers.search``.

  # A laptop search on the bundled digits (or CIFAR-10 if prepared in TFDS):
  python -m evonorm_layers.search --output_dir=runs/b_series --workers=2
  # The S-series search (no batch aggregations), on an existing Ray cluster:
  python -m evonorm_layers.search --output_dir=gs_or_nfs/s_series \
    --batch_independent --address=auto --workers=500 --max_candidates=20000
  # Continue a killed or finished search (e.g. with more candidates):
  python -m evonorm_layers.search --output_dir=runs/b_series --resume \
    --max_candidates=400

Writes ``evaluations.jsonl``, ``report.md``, ``best_layers.json`` and the
plots to ``--output_dir`` (see ``evonorm_layers.search.report``).
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import app
from absl import flags

from evonorm_layers import cli
from evonorm_layers.search import controller
from evonorm_layers.search import proxies
from evonorm_layers.search import report
from evonorm_layers.search import store as store_lib

FLAGS = flags.FLAGS
_DEFAULTS = controller.SearchConfig()
_PROXY = proxies.ProxyConfig()

flags.DEFINE_string("output_dir", None, "Directory of the search's files.")
flags.DEFINE_bool("resume", False, "Continue the search in --output_dir.")
flags.DEFINE_enum("algorithm", _DEFAULTS.algorithm, controller.ALGORITHMS,
                  "Regularized evolution, or random search with rejection.")
flags.DEFINE_enum("criterion", _DEFAULTS.criterion, ["pareto", "average"],
                  "Tournament winner: a random member of the Pareto front, "
                  "or the best average accuracy over anchors.")
flags.DEFINE_integer("population", _DEFAULTS.population,
                     "Sliding-window population size.", lower_bound=1)
flags.DEFINE_integer("tournament", _DEFAULTS.tournament,
                     "Tournament sample size.", lower_bound=1)
flags.DEFINE_integer("max_candidates", _DEFAULTS.max_candidates,
                     "Stop after this many evaluations.", lower_bound=1)
flags.DEFINE_bool("batch_independent", False,
                  "Exclude batch aggregations (the S-series search).")
flags.DEFINE_integer("seed", 0, "Random seed of the search.")
flags.DEFINE_integer("workers", 2, "Candidates evaluated at once (Ray tasks "
                     "of one CPU each).", lower_bound=1)
flags.DEFINE_string("address", None, "Ray cluster address (e.g. 'auto'); "
                    "default: start Ray on this machine.")
flags.DEFINE_integer("rerank_top_k", 10, "Re-train this many best layers "
                     "longer on held-out data (0: skip).", lower_bound=0)
flags.DEFINE_integer("rerank_steps", None, "Training steps of the "
                     "re-ranking (default: twice --train_steps).")
flags.DEFINE_multi_string("compare_to", [], "Output dirs of other searches "
                          "to draw in the progress plot (e.g. a random "
                          "search with rejection).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
# Proxy tasks.
flags.DEFINE_enum("dataset", _PROXY.dataset, ["auto", "cifar10", "digits"],
                  "auto: CIFAR-10 if prepared in TFDS, else the digits.")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir for CIFAR-10.")
flags.DEFINE_list("anchors", list(_PROXY.anchors), "Anchor architectures.")
for _name in ("image_size", "width", "blocks", "batch_size", "groups",
              "quality_steps", "train_steps", "eval_examples",
              "stability_steps", "stability_batch"):
  flags.DEFINE_integer(_name, getattr(_PROXY, _name),
                       f"Proxy setting (see ProxyConfig.{_name}).",
                       lower_bound=0)
for _name in ("learning_rate", "weight_decay", "quality_threshold",
              "stability_threshold", "stability_step_size"):
  flags.DEFINE_float(_name, getattr(_PROXY, _name),
                     f"Proxy setting (see ProxyConfig.{_name}).")

# Flags that define the search; a resumed search keeps its stored values.
_DEFINING = ("algorithm", "criterion", "population", "tournament",
             "batch_independent", "seed")
_PROXY_FLAGS = tuple(f.name for f in dataclasses.fields(proxies.ProxyConfig)
                     if f.name not in ("seed", "eval_split"))


def config_from_flags() -> controller.SearchConfig:
  proxy = {name: FLAGS[name].value for name in _PROXY_FLAGS}
  proxy["anchors"] = tuple(proxy["anchors"])
  return controller.SearchConfig(
      proxy=proxies.ProxyConfig(**proxy, seed=FLAGS.seed),
      max_candidates=FLAGS.max_candidates,
      **{name: FLAGS[name].value for name in _DEFINING})


def resumed_config(stored: dict) -> controller.SearchConfig:
  """The stored config; flags may only extend it (``--max_candidates``)."""
  changed = [name for name in _DEFINING + _PROXY_FLAGS
             if FLAGS[name].present and
             FLAGS[name].value != (stored.get(name) if name in _DEFINING
                                   else (list(stored["proxy"][name])
                                         if name == "anchors"
                                         else stored["proxy"][name]))]
  if changed:
    raise ValueError(
        f"--resume continues the search as it was defined; these flags differ "
        f"from it: {', '.join('--' + c for c in changed)}. Drop them, or "
        "start a new search in another --output_dir.")
  if FLAGS["max_candidates"].present:
    stored = {**stored, "max_candidates": FLAGS.max_candidates}
  return controller.SearchConfig.from_dict(stored)


def rerank(config, search_records, evaluator, store, top_k, steps):
  """Re-trains the best layers on held-out data (Ray); returns id -> result."""
  done = {}
  path = store.path(report.RERANK_LOG)
  if os.path.exists(path):
    with open(path) as f:
      done = {r["id"]: r for r in map(json.loads, f)}
  proxy = dataclasses.replace(config.proxy, train_steps=steps,
                              quality_threshold=0.0, stability_steps=0,
                              eval_split="held_out").to_dict()
  todo = [r for r in report.best(search_records, top_k) if r["id"] not in done]
  refs = {evaluator.submit({"id": r["id"], "graph": r["graph"]}, proxy, []):
          r for r in todo}
  while refs:
    ref = evaluator.wait_one(refs)
    record = refs.pop(ref)
    result = evaluator.result(ref)
    fitness = result.get("fitness") or {}
    entry = {"id": record["id"], "fitness": fitness,
             "score": (sum(fitness.values()) / len(fitness)) if fitness
             else 0.0, "status": result.get("status")}
    with open(path, "a") as f:
      f.write(json.dumps(entry) + "\n")
    done[record["id"]] = entry
  return done


def main(argv):
  with cli.user_errors():
    if len(argv) > 1:
      raise ValueError(f"unexpected arguments {argv[1:]}: every setting is a "
                       "flag (see --helpshort).")
    if not FLAGS.output_dir:
      raise ValueError("--output_dir is required: the directory of the "
                       "search's log, checkpoint and report.")
    store = store_lib.SearchStore(FLAGS.output_dir)
    if FLAGS.resume:
      config = resumed_config(store.open_existing())
    else:
      config = config_from_flags()
      store.create(config.to_dict())
  if FLAGS.resume and FLAGS["max_candidates"].present:
    store.update_config(config.to_dict())

  evaluator = controller.RayEvaluator(FLAGS.workers, FLAGS.address)
  try:
    records = controller.Search(config, store, evaluator, FLAGS.workers,
                                progress=FLAGS.progress).run()
    reranked = None
    if FLAGS.rerank_top_k:
      reranked = rerank(config, records, evaluator, store, FLAGS.rerank_top_k,
                        FLAGS.rerank_steps or 2 * config.proxy.train_steps)
  finally:
    evaluator.shutdown()
  compare = {os.path.basename(os.path.normpath(d)) or d:
             store_lib.SearchStore(d).records() for d in FLAGS.compare_to}
  path = report.write_report(store.output_dir, config.to_dict(), records,
                             reranked, compare, top_k=max(
                                 FLAGS.rerank_top_k, 10))
  print(f"\nReport: {path}")


if __name__ == "__main__":
  app.run(main)
