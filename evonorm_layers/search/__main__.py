r"""Runs a layer search: ``python -m evonorm_layers.search``.

  # A laptop search (--preset=laptop, the default) on the bundled digits
  # (or CIFAR-10 if prepared in TFDS):
  python -m evonorm_layers.search --output_dir=runs/b_series --workers=2
  # Warm start from known layers, on your own architecture and images:
  python -m evonorm_layers.search --output_dir=runs/unet \
    --seed_layers=bn_relu,evonorm_b0 --anchors=my_pkg.models:build_unet \
    --dataset=/data/my_images
  # The S-series search (no batch aggregations), on an existing Ray cluster:
  python -m evonorm_layers.search --output_dir=gs_or_nfs/s_series \
    --preset=cluster --batch_independent --address=auto --workers=500 \
    --max_candidates=20000
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
from evonorm_layers.search import evaluation
from evonorm_layers.search import proxies
from evonorm_layers.search import proxy_flags
from evonorm_layers.search import report
from evonorm_layers.search import store as store_lib
from evonorm_layers.search.graph import LayerGraph
from evonorm_layers.search.known_layers import KNOWN_GRAPHS

FLAGS = flags.FLAGS
_DEFAULTS = controller.SearchConfig()

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
flags.DEFINE_list("seed_layers", [], "Start the population from these "
                  "layers and their mutations instead of random layers: "
                  "names of the paper's layers (" + ", ".join(
                      sorted(KNOWN_GRAPHS)) + ") or of searched ones, or a "
                  "best_layers.json file (all its layers).")
flags.DEFINE_list("baselines", list(report.BASELINES), "Known layers "
                  "evaluated first under the same proxy, for comparison in "
                  "the report; bn_relu must pass (else the proxy is "
                  "miscalibrated and the search stops).")
flags.DEFINE_integer("seed", 0, "Random seed of the search.")
flags.DEFINE_integer("workers", 2, "Candidates evaluated at once (Ray tasks "
                     "of one CPU each).", lower_bound=1)
flags.DEFINE_integer("worker_max_calls", 0, "Restart each worker process "
                     "after this many evaluations (0: never), bounding its "
                     "memory on long searches; each restart costs one setup "
                     "of the data and anchors.", lower_bound=0)
flags.DEFINE_string("address", None, "Ray cluster address (e.g. 'auto'); "
                    "default: start Ray on this machine.")
flags.DEFINE_integer("rerank_top_k", 10, "Re-train this many best layers "
                     "longer on held-out data (0: skip).", lower_bound=0)
flags.DEFINE_integer("rerank_steps", None, "Training steps of the "
                     "re-ranking (default: twice --train_steps).")
flags.DEFINE_multi_string("compare_to", [], "Output dirs of other searches "
                          "to draw in the progress plot (e.g. a random "
                          "search with rejection).")
flags.DEFINE_float("max_minutes", None, "Stop proposing candidates after "
                   "this many minutes (those in flight finish); --resume "
                   "goes on.", lower_bound=0)
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_enum("evaluation_path", "hybrid", evaluation.PATHS,
                  "Where a candidate's stages run: 'hybrid' (the first "
                  "anchor's stability test on an anchor traced once per "
                  "worker, the rest on models compiled for the candidate), "
                  "'sessions' (everything on the "
                  "traced anchors) or 'compiled' (everything compiled per "
                  "candidate). Same scores; see bench/search_throughput.py.")
proxy_flags.define()

# Flags that define the search; a resumed search keeps its stored values.
_DEFINING = ("algorithm", "criterion", "population", "tournament",
             "batch_independent", "seed", "seed_layers")


def config_from_flags() -> controller.SearchConfig:
  seeds = controller.resolve_seed_layers(FLAGS.seed_layers)
  return controller.SearchConfig(
      proxy=proxy_flags.proxy_config(FLAGS.seed),
      max_candidates=FLAGS.max_candidates,
      seed_graphs=tuple(g.to_json() for g in seeds.values()),
      **{name: FLAGS[name].value for name in _DEFINING})


def resumed_config(stored: dict) -> controller.SearchConfig:
  """The stored config; flags may only extend it (``--max_candidates``)."""
  changed = [name for name in _DEFINING if FLAGS[name].present and
             FLAGS[name].value != stored.get(name)]
  changed += [name for name, value in proxy_flags.given().items()
              if FLAGS[name].present and (list(value) if name == "anchors"
                                          else value) != (
                  list(stored["proxy"][name]) if name == "anchors"
                  else stored["proxy"][name])]
  if changed:
    raise ValueError(
        f"--resume continues the search as it was defined; these flags differ "
        f"from it: {', '.join('--' + c for c in changed)}. Drop them, or "
        "start a new search in another --output_dir.")
  if FLAGS["max_candidates"].present:
    stored = {**stored, "max_candidates": FLAGS.max_candidates}
  return controller.SearchConfig.from_dict(stored)


def evaluate_baselines(config, evaluator, store, names) -> dict:
  """Evaluates the baselines (known layers) and the seed layers once, under
  the search's proxy; kept in ``baselines.jsonl``. Raises ValueError when
  BN-ReLU is rejected: the proxy would not tell good layers from bad."""
  path = store.path(report.BASELINE_LOG)
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      done = {r["layer"]: r for r in map(json.loads, f)}
  todo = {name: KNOWN_GRAPHS[name] for name in names if name not in done}
  for i, graph_json in enumerate(config.seed_graphs):
    name = f"seed_{i}"
    if name not in done:
      todo[name] = LayerGraph.from_json(graph_json)
  refs = {evaluator.submit({"id": -1, "graph": g.to_dict()},
                           config.proxy.to_dict(), []): (name, g)
          for name, g in todo.items()}
  while refs:
    ref = evaluator.wait_one(refs)
    name, g = refs.pop(ref)
    record = {**evaluator.result(ref), "layer": name, "graph": g.to_dict(),
              "formula": g.formula(), "fingerprint": g.fingerprint()}
    with open(path, "a") as f:
      f.write(json.dumps(record) + "\n")
    done[name] = record
  bn_relu = done.get("bn_relu")
  if bn_relu is not None and bn_relu["status"] != "accepted":
    raise ValueError(
        "the proxy rejects BN-ReLU (" + report.rejection_text(bn_relu) +
        "), so it cannot tell good layers from bad: raise --quality_steps or "
        "--learning_rate, lower --quality_threshold, or pick another "
        "--preset; `python -m evonorm_layers.search.calibrate` with the "
        "same proxy flags prints what it accepts and rejects.")
  return done


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
    unknown = sorted(set(FLAGS.baselines) - set(KNOWN_GRAPHS))
    if unknown:
      raise ValueError(f"Unknown --baselines {unknown}; choose among "
                       f"{sorted(KNOWN_GRAPHS)}.")
    store = store_lib.SearchStore(FLAGS.output_dir)
    if FLAGS.resume:
      config = resumed_config(store.open_existing())
    else:
      config = config_from_flags()
      # The data and the anchors are checked here, before any work.
      evaluation.check_anchors(config.proxy, proxies.load_data(config.proxy))
      store.create(config.to_dict())
  if FLAGS.resume and FLAGS["max_candidates"].present:
    store.update_config(config.to_dict())

  evaluator = controller.RayEvaluator(FLAGS.workers, FLAGS.address,
                                      path=FLAGS.evaluation_path,
                                      max_calls=FLAGS.worker_max_calls)
  try:
    with cli.user_errors():
      baselines = evaluate_baselines(config, evaluator, store,
                                     FLAGS.baselines)
    records = controller.Search(config, store, evaluator, FLAGS.workers,
                                progress=FLAGS.progress).run(
                                    None if FLAGS.max_minutes is None
                                    else 60 * FLAGS.max_minutes)
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
                                 FLAGS.rerank_top_k, 10),
                             baselines=baselines)
  print(f"\nReport: {path}")


if __name__ == "__main__":
  app.run(main)
