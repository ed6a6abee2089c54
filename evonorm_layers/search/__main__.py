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

from absl import flags

from evonorm_model_garden import cli
from evonorm_layers.search import controller
from evonorm_layers.search import runners
from evonorm_layers.search import proxy_data
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
flags.DEFINE_list("seed_layers", None, "Start the population from these "
                  "layers and their mutations instead of random layers: "
                  "names of the paper's layers (" + ", ".join(
                      sorted(KNOWN_GRAPHS)) + ") or of searched ones, or a "
                  "best_layers.json file (all its layers). Default for "
                  "evolution: " + ",".join(controller.DEFAULT_SEEDS[False])
                  + " (" + ",".join(controller.DEFAULT_SEEDS[True])
                  + " with --batch_independent); --seed_layers= (empty) "
                  "starts from random layers, as the paper did; random "
                  "search takes none.")
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
proxy_flags.define()

# Flags that define the search; a resumed search keeps its stored values.
_DEFINING = ("algorithm", "criterion", "population", "tournament",
             "batch_independent", "seed", "seed_layers")


def seed_layers_from_flags() -> list[str]:
  """``--seed_layers``, or the warm start evolution takes by default."""
  if FLAGS.seed_layers is not None:
    return FLAGS.seed_layers
  if FLAGS.algorithm != "evolution":
    return []
  return list(controller.DEFAULT_SEEDS[FLAGS.batch_independent])


def config_from_flags() -> controller.SearchConfig:
  seed_layers = seed_layers_from_flags()
  seeds = controller.resolve_seed_layers(seed_layers)
  values = {name: FLAGS[name].value for name in _DEFINING}
  values["seed_layers"] = seed_layers
  return controller.SearchConfig(
      proxy=proxy_flags.proxy_config(FLAGS.seed),
      max_candidates=FLAGS.max_candidates,
      seed_graphs=tuple(g.to_json() for g in seeds.values()), **values)


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


def _logged(path: str, key: str) -> dict:
  """The records of a JSON-lines log by ``key`` (empty without a log)."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {r[key]: r for r in map(json.loads, f)}


def evaluate_logged(evaluator, jobs: dict, proxy: dict, path: str,
                    key_field: str, entry, bar=None) -> dict:
  """Evaluates the ``jobs`` (key -> candidate) not yet in the log at
  ``path`` on the workers at once, appending ``entry(key, candidate,
  result)`` (whose ``key_field`` is the key) as each finishes, so a killed
  run keeps what finished and a resumed one redoes only the rest; returns
  key -> entry for every job, logged before or now."""
  done = _logged(path, key_field)
  refs = {evaluator.submit(candidate, proxy, []): key
          for key, candidate in jobs.items() if key not in done}
  while refs:
    ref = evaluator.wait_one(refs)
    key = refs.pop(ref)
    done[key] = entry(key, jobs[key], evaluator.result(ref))
    with open(path, "a") as f:
      f.write(json.dumps(done[key]) + "\n")
    if bar is not None:
      bar.update(1)
  return done


def baseline_jobs(config, names) -> dict:
  """The known layers and seed layers a search evaluates first, by name."""
  graphs = {name: KNOWN_GRAPHS[name] for name in names}
  for i, graph_json in enumerate(config.seed_graphs):
    graphs[f"seed_{i}"] = LayerGraph.from_json(graph_json)
  return {name: {"id": -1, "graph": g.to_dict()} for name, g in graphs.items()}


def evaluate_baselines(config, evaluator, store, names, bar=None) -> dict:
  """Evaluates the baselines (known layers) and the seed layers once, under
  the search's proxy; kept in ``baselines.jsonl``. Raises ValueError when
  BN-ReLU is rejected: the proxy would not tell good layers from bad."""

  def entry(name, candidate, result):
    graph = LayerGraph.from_dict(candidate["graph"])
    return {**result, "layer": name, "graph": candidate["graph"],
            "formula": graph.formula(), "fingerprint": graph.fingerprint()}

  done = evaluate_logged(evaluator, baseline_jobs(config, names),
                         config.proxy.to_dict(),
                         store.path(report.BASELINE_LOG), "layer", entry, bar)
  bn_relu = done.get("bn_relu")
  if bn_relu is not None and bn_relu["status"] != "accepted":
    raise ValueError(
        "the proxy rejects BN-ReLU (" + report.rejection_text(bn_relu) +
        "), so it cannot tell good layers from bad: raise --quality_steps or "
        "--learning_rate, lower --quality_threshold, or pick another "
        "--preset; `python -m evonorm_layers.search.calibrate` with the "
        "same proxy flags prints what it accepts and rejects.")
  return done


def rerank(config, search_records, evaluator, store, top_k, steps,
           known=(), bar=None):
  """Re-trains the best found layers on held-out data; returns id ->
  result."""
  proxy = dataclasses.replace(config.proxy, train_steps=steps,
                              quality_threshold=0.0, stability_steps=0,
                              eval_split="held_out").to_dict()
  jobs = {r["id"]: {"id": r["id"], "graph": r["graph"]}
          for r in report.best(search_records, top_k, known)}

  def entry(record_id, candidate, result):
    del candidate
    fitness = result.get("fitness") or {}
    return {"id": record_id, "fitness": fitness,
            "score": (sum(fitness.values()) / len(fitness)) if fitness
            else 0.0, "status": result.get("status")}

  return evaluate_logged(evaluator, jobs, proxy,
                         store.path(report.RERANK_LOG), "id", entry, bar)


def main(argv):
  with cli.user_errors():
    if len(argv) > 1:
      raise ValueError(f"unexpected arguments {argv[1:]}: every setting is a "
                       "flag (see --helpshort).")
    if not FLAGS.output_dir:
      raise ValueError("--output_dir is required: the directory of the "
                       "search's log, checkpoint and report.")
    cli.check_output_dir("--output_dir", FLAGS.output_dir)
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
      runners.check_anchors(config.proxy, proxy_data.load_data(config.proxy))
      store.create(config.to_dict())
  if FLAGS.resume and FLAGS["max_candidates"].present:
    store.update_config(config.to_dict())

  # One bar for the whole run: the baselines, the candidates, the
  # re-ranking.
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  todo_baselines = set(baseline_jobs(config, FLAGS.baselines)) - set(
      _logged(store.path(report.BASELINE_LOG), "layer"))
  logged = len(store.records())
  bar = tqdm(total=len(todo_baselines) + config.max_candidates +
             FLAGS.rerank_top_k, initial=min(logged, config.max_candidates),
             desc="layer search", unit="layer", disable=not FLAGS.progress,
             dynamic_ncols=True)
  evaluator = controller.RayEvaluator(FLAGS.workers, FLAGS.address,
                                      max_calls=FLAGS.worker_max_calls)
  try:
    with cli.user_errors():
      bar.set_description("known layers")
      baselines = evaluate_baselines(config, evaluator, store,
                                     FLAGS.baselines, bar)
    bar.set_description("layer search")
    records = controller.Search(config, store, evaluator, FLAGS.workers,
                                bar=bar).run(
                                    None if FLAGS.max_minutes is None
                                    else 60 * FLAGS.max_minutes)
    reranked = None
    if FLAGS.rerank_top_k:
      bar.set_description("re-ranking")
      known = list(baselines.values())
      # The bar counts the layers the re-ranking really trains.
      bar.total -= FLAGS.rerank_top_k - len(report.best(
          records, FLAGS.rerank_top_k, known))
      reranked = rerank(config, records, evaluator, store, FLAGS.rerank_top_k,
                        FLAGS.rerank_steps or 2 * config.proxy.train_steps,
                        known, bar)
  finally:
    bar.close()
    evaluator.shutdown()
  compare = {os.path.basename(os.path.normpath(d)) or d:
             store_lib.SearchStore(d).records() for d in FLAGS.compare_to}
  path = report.write_report(store.output_dir, config.to_dict(), records,
                             reranked, compare, top_k=max(
                                 FLAGS.rerank_top_k, 10),
                             baselines=baselines)
  print(f"\nReport: {path}")


if __name__ == "__main__":
  cli.run(main)
