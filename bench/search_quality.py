r"""Does the search find layers? Evolution against random search, measured.

Runs the real search (``python -m evonorm_layers.search``, Ray workers) with
regularized evolution (Pareto tournaments) and with random search with
rejection, each for ``--seeds`` seeds, with the same candidate budget
(``--max_candidates``) and the same wall-time budget (``--max_minutes`` per
run), then draws the paper's Figure 6 from the runs: the best average
accuracy over the anchors against the number of candidates evaluated,
median and range over seeds per algorithm, and beside it the same against
minutes of wall time, the budget that both algorithms share. Its table
lists each run's best layer as a formula with its accuracy per anchor, next
to BN-ReLU, EvoNorm-B0 and EvoNorm-S0 evaluated under the same protocol
(each run's ``baselines.jsonl``).

  python bench/search_quality.py                  # laptop preset, 3 seeds
  python bench/search_quality.py --max_minutes=120 --max_candidates=2000
  python bench/search_quality.py --algorithms=random \
      --seed_layers=bn_relu,evonorm_b0,evonorm_s0   # warm-started evolution

``--seed_layers`` adds evolution warm-started from known layers
(``evolution_seeded``): with the paper's random initial population a
laptop-sized budget rarely accepts enough layers to fill the population.

Each run lives in ``--output_dir/ALGORITHM_seedN``; a killed benchmark run
again with the same flags resumes every unfinished search and keeps what
finished. Proxy flags (``--preset``, ``--train_steps``, ...) are passed to
every search.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from evonorm_layers.search import controller  # noqa: E402
from evonorm_layers.search import evolution  # noqa: E402
from evonorm_layers.search import proxy_flags  # noqa: E402
from evonorm_layers.search import report  # noqa: E402
from evonorm_layers.search import store as store_lib  # noqa: E402
import bench_flags  # noqa: E402  (bench/)

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/search_quality", "Where the runs, "
                    "the plot and the table go.")
flags.DEFINE_list("algorithms", ["evolution", "random"], "Search algorithms.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of each algorithm.")
flags.DEFINE_integer("max_candidates", 400, "Candidate budget per run.",
                     lower_bound=1)
flags.DEFINE_float("max_minutes", 60.0, "Wall-time budget per run.",
                   lower_bound=0)
flags.DEFINE_integer("workers", 2, "Ray workers per run.", lower_bound=1)
flags.DEFINE_integer("parallel_runs", 1, "Searches run at once (e.g. 2 "
                     "runs of 1 worker on 2 cores: both algorithms share the "
                     "machine alike).", lower_bound=1)
flags.DEFINE_integer("population", 20, "Evolution's population.")
flags.DEFINE_integer("tournament", 5, "Evolution's tournament size.")
flags.DEFINE_bool("batch_independent", False, "S-series search space.")
flags.DEFINE_list("baselines", list(report.BASELINES), "Known layers each "
                  "run evaluates under its protocol, for the table and the "
                  "plot (bn_relu at least: the proxy must accept it).")
flags.DEFINE_list("seed_layers", [], "Also run evolution warm-started from "
                  "these layers (its runs are named evolution_seeded_seedN); "
                  "random search has no population to seed.")
proxy_flags.define()


def _command(name, algorithm, seed, seed_layers=()):
  """The search command of one run, or None if the run has finished (its
  report is written); a killed run resumes (with a fresh time budget)."""
  output_dir = os.path.join(FLAGS.output_dir, name)
  if os.path.exists(os.path.join(output_dir, report.REPORT)):
    return None
  resume = os.path.exists(os.path.join(output_dir, store_lib.CONFIG))
  command = [sys.executable, "-m", "evonorm_layers.search",
             f"--output_dir={output_dir}", "--noprogress",
             f"--max_candidates={FLAGS.max_candidates}",
             f"--max_minutes={FLAGS.max_minutes}",
             f"--workers={FLAGS.workers}", "--rerank_top_k=0"]
  if resume:
    command.append("--resume")
  else:
    command += [f"--algorithm={algorithm}", f"--seed={seed}",
                f"--population={FLAGS.population}",
                f"--tournament={FLAGS.tournament}",
                f"--preset={FLAGS.preset}",
                f"--batch_independent={FLAGS.batch_independent}",
                "--baselines=" + ",".join(FLAGS.baselines)]
    if algorithm == "evolution":  # cold unless seeded (not the default)
      command.append("--seed_layers=" + ",".join(seed_layers))
    for key, value in proxy_flags.given().items():
      command.append(f"--{key}=" + (",".join(value) if key == "anchors"
                                    else str(value)))
  return command


def _run_all(runs: dict) -> None:
  """Runs the searches, ``--parallel_runs`` at a time (each its own Ray
  instance with ``--workers`` CPUs; its output in ``NAME.log``)."""
  waiting = [(name, _command(name, *spec)) for name, spec in runs.items()]
  running = {}
  while waiting or running:
    while waiting and len(running) < FLAGS.parallel_runs:
      name, command = waiting.pop(0)
      if command is None:
        print(f"{name}: finished before", flush=True)
        continue
      print(f"{name}: {'resuming' if '--resume' in command else 'starting'}",
            flush=True)
      log = os.path.join(FLAGS.output_dir, f"{name}.log")
      with open(log, "a") as f:
        running[name] = (subprocess.Popen(command, stdout=f, stderr=f), log)
    for name, (process, log) in list(running.items()):
      if process.poll() is None:
        continue
      del running[name]
      if process.returncode:
        with open(log) as f:
          last = (f.read().strip().splitlines() or ["(no output)"])[-1]
        for other, _ in running.values():
          other.kill()
        raise RuntimeError(f"{name} failed: {last}")
      print(f"{name}: done", flush=True)
    time.sleep(1)


def _baselines(output_dir):
  path = os.path.join(output_dir, report.BASELINE_LOG)
  with open(path) as f:
    return {r["layer"]: r for r in map(json.loads, f)}


def summarize(runs: dict) -> dict:
  """Per algorithm: best average fitness per seed, and the curves."""
  summary = {}
  for name, output_dir in runs.items():
    algorithm = name.rsplit("_seed", 1)[0]
    # A warm start's seeds count against its budget but are not found
    # layers: neither its best layer nor its curve may be a seed, nor a
    # layer equivalent to a seed or baseline.
    records = store_lib.SearchStore(output_dir).records()
    baselines = _baselines(output_dir)
    accepted = report.found(records, list(baselines.values()))
    top = max(accepted, key=evolution.average_fitness, default=None)
    xs, ys = report.progress_curve(records, list(baselines.values()))
    minutes = _minutes(records)
    summary.setdefault(algorithm, []).append({
        "run": name, "candidates": len(records), "accepted": len(accepted),
        "best": top, "best_average": (evolution.average_fitness(top)
                                      if top else None),
        "curve": (xs, ys), "time_curve": ([minutes[x - 1] for x in xs], ys),
        "minutes": minutes[-1] if minutes else 0.0,
        "baselines": baselines,
        "seconds": sum(r.get("seconds", {}).get("total", 0.0)
                       for r in records)})
  return summary


def _minutes(records):
  """Minutes of wall time from the start of a run's first evaluation to the
  end of each record's (a resumed run's pause included)."""
  if not records:
    return []
  first = records[0]
  start = first["finished_at"] - first.get("seconds", {}).get("total", 0.0)
  minutes, last = [], start
  for record in records:
    last = record.get("finished_at", last)
    minutes.append((last - start) / 60)
  return minutes


NOTHING = float("-inf")  # a run that has accepted no layer yet


def median_best(values):
  """The median over runs, a run without an accepted layer counting as the
  lowest; None when that is where the median falls."""
  middle = statistics.median([NOTHING if v is None else v for v in values])
  return None if middle == NOTHING else middle


def _best_on_grid(xs, ys, grid):
  """A run's best-so-far curve read at every grid point (NOTHING before its
  first accepted layer)."""
  values, j, best = [], 0, NOTHING
  for x in grid:
    while j < len(xs) and xs[j] <= x:
      best = ys[j]
      j += 1
    values.append(best)
  return values


def _draw(ax, summary, key, end, grid_of):
  """One panel: every run thin, the median over an algorithm's runs bold
  (drawn where at least half of them have accepted a layer; a run that
  stopped earlier keeps its final best)."""
  for algorithm, runs in summary.items():
    grid = grid_of(runs)
    curves = [_best_on_grid(*run[key], grid) for run in runs]
    med, at = [], []
    for i, x in enumerate(grid):
      middle = median_best([c[i] for c in curves])
      if middle is not None:
        at.append(x)
        med.append(middle)
    line, = ax.plot(at, med, linewidth=2,
                    label=f"{algorithm} (median of {len(runs)})")
    for run, values in zip(runs, curves):
      points = [(x, v) for x, v in zip(grid, values)
                if x <= run[end] and v != NOTHING]
      if points:
        ax.plot(*zip(*points), color=line.get_color(), alpha=0.35,
                linewidth=0.8, marker="." if len(points) == 1 else None)
  baselines = next(iter(summary.values()))[0]["baselines"]
  for name, style in (("bn_relu", ":"), ("evonorm_b0", "--"),
                      ("evonorm_s0", "-.")):
    if baselines.get(name, {}).get("fitness"):
      ax.axhline(evolution.average_fitness(baselines[name]), color="gray",
                 linestyle=style, linewidth=1, label=name)
  ax.grid(alpha=0.3)


def plot(summary, path, budget):
  """Best fitness against candidates evaluated (the paper's Figure 6, on a
  log axis: at equal wall time random search evaluates 15-30 times more
  candidates than evolution, most rejected in under a second) and against
  minutes of search (the equal-budget view)."""
  plt = report._plt()  # pylint: disable=protected-access
  fig, (by_count, by_time) = plt.subplots(1, 2, figsize=(11, 4.2),
                                          sharey=True)
  _draw(by_count, summary, "curve", "candidates", lambda runs: list(range(
      1, min(budget, max(r["candidates"] for r in runs)) + 1)))
  by_count.set_xscale("log")
  by_count.set_xlabel("candidates evaluated")
  by_count.set_ylabel("best accuracy (average over anchors)")
  _draw(by_time, summary, "time_curve", "minutes", lambda runs: list(
      np.linspace(0, max(r["minutes"] for r in runs), 400)))
  by_time.set_xlabel("minutes of search (wall time)")
  by_time.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _cell(formula: str) -> str:
  """A formula as a Markdown table cell: its ``|x|`` would end the cell."""
  return formula.replace("|", "\\|")


def _bn_relu(run) -> str:
  """BN-ReLU's average accuracy under the run's own protocol (its seed)."""
  b = run["baselines"].get("bn_relu")
  return f"{evolution.average_fitness(b):.3f}" if b and b.get(
      "fitness") else "-"


def table(summary, anchors) -> str:
  lines = ["| run | candidates | accepted | best layer | " + " | ".join(
      anchors) + " | average | bn_relu, same seed |",
           "|---|---:|---:|---|" + "---:|" * (len(anchors) + 2)]
  for runs in summary.values():
    for run in runs:
      top = run["best"]
      if top is None:
        lines.append(f"| {run['run']} | {run['candidates']} | 0 | (none "
                     "accepted) |" + " - |" * (len(anchors) + 1) +
                     f" {_bn_relu(run)} |")
        continue
      lines.append(
          f"| {run['run']} | {run['candidates']} | {run['accepted']} | "
          f"`{_cell(top['formula'])}` | " + " | ".join(
              f"{top['fitness'][a]:.3f}" for a in anchors) +
          f" | {run['best_average']:.3f} | {_bn_relu(run)} |")
  first = next(iter(summary.values()))[0]
  for name in report.BASELINES:
    b = first["baselines"].get(name)
    if b and b.get("fitness"):
      lines.append(f"| {name} (same protocol, {first['run']}) | | | | " +
                   " | ".join(f"{b['fitness'][a]:.3f}" for a in anchors) +
                   f" | {evolution.average_fitness(b):.3f} | |")
  return "\n".join(lines)


def main(argv):
  del argv
  with bench_flags.checked():
    controller.resolve_seed_layers(FLAGS.seed_layers)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  variants = [(a, a, ()) for a in FLAGS.algorithms]
  if FLAGS.seed_layers:
    variants.insert(0, ("evolution_seeded", "evolution", FLAGS.seed_layers))
  specs = {f"{label}_seed{seed}": (algorithm, int(seed), seed_layers)
           for label, algorithm, seed_layers in variants
           for seed in FLAGS.seeds}
  _run_all(specs)
  runs = {name: os.path.join(FLAGS.output_dir, name) for name in specs}
  summary = summarize(runs)
  with open(os.path.join(next(iter(runs.values())), store_lib.CONFIG)) as f:
    anchors = json.load(f)["proxy"]["anchors"]
  figure = os.path.join(FLAGS.output_dir, "search_quality.png")
  plot(summary, figure, FLAGS.max_candidates)
  text = table(summary, anchors)
  lines = [text, ""]
  for algorithm, runs in summary.items():
    middle = median_best([r["best_average"] for r in runs])
    empty = sum(r["best_average"] is None for r in runs)
    lines.append(f"{algorithm}: median best average accuracy "
                 + ("none" if middle is None else f"{middle:.3f}")
                 + f" over {len(runs)} seeds"
                 + (f" ({empty} accepted no layer)" if empty else "") + "; "
                 "candidates per run " + ", ".join(
                     str(r["candidates"]) for r in runs) +
                 "; wall time per run " + ", ".join(
                     f"{r['minutes']:.1f} min" for r in runs) +
                 " (evaluating: " + ", ".join(
                     f"{r['seconds'] / 60:.1f}" for r in runs) + " min)")
  bn_relu = _bn_relu(next(iter(summary.values()))[0])
  if bn_relu != "-":
    lines.append(f"bn_relu under the same protocol: {bn_relu}")
  lines.append(f"Figure: {figure}")
  print("\n".join(lines))
  with open(os.path.join(FLAGS.output_dir, "summary.json"), "w") as f:
    json.dump({a: [{k: v for k, v in r.items()
                    if k not in ("curve", "time_curve")}
                   for r in rs] for a, rs in summary.items()}, f, indent=1,
              default=str)


if __name__ == "__main__":
  bench_flags.run(main)
