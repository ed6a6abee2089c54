"""What a search found: re-ranking, plots, a markdown report, best layers.

* ``figure2_random_layers.png``: accuracy histograms of random layers per
  anchor (the paper's Figure 2);
* ``figure6_progress.png``: the mean average-accuracy of the 10 best layers
  found so far against the number of candidates, for this search and any
  searches passed to compare with, e.g. random search with rejection (the
  paper's Figure 6);
* ``pareto_front.png``: accepted layers by accuracy on each pair of
  anchors, the Pareto front highlighted;
* ``report.md``: counts, the cost of rejections, and the best layers as
  formulas (text and LaTeX) with their scores per anchor and, after
  re-ranking, on held-out data;
* ``best_layers.json``: the best graphs by name, for
  ``evonorm_layers.search.load_searched_layers``.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Mapping, Sequence

import numpy as np

from evonorm_layers.search import evolution
from evonorm_layers.search import store as store_lib
from evonorm_layers.search.graph import LayerGraph

RERANK_LOG = "rerank.jsonl"
BASELINE_LOG = "baselines.jsonl"
REPORT = "report.md"  # written last: a search with one has finished
# Known layers every search evaluates first, under its own proxy.
BASELINES = ("bn_relu", "evonorm_b0", "evonorm_s0")
STAGES = ("probe", "stability", "quality", "training", "evaluation")


def best(records: Sequence[dict], k: int) -> list[dict]:
  """The ``k`` accepted, distinct layers with the best average accuracy."""
  seen, result = set(), []
  for record in sorted(store_lib.accepted(records),
                       key=evolution.average_fitness, reverse=True):
    if record["fingerprint"] in seen or record.get("cached_from") is not None:
      continue
    seen.add(record["fingerprint"])
    result.append(record)
  return result[:k]


def layer_name(record: dict) -> str:
  return f"searched_{record['fingerprint']}"


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_random_histograms(records, anchors, path):
  plt = _plt()
  random = [r for r in records if r.get("origin") == "random"]
  fig, axes = plt.subplots(1, len(anchors), figsize=(4 * len(anchors), 3.2),
                           squeeze=False)
  for ax, anchor in zip(axes[0], anchors):
    accuracies = [r["quality"][anchor] for r in random
                  if anchor in r.get("quality", {})]
    untrained = sum(1 for r in random if anchor not in r.get("quality", {}))
    ax.hist(accuracies, bins=20, range=(0, 1), color="tab:blue")
    if accuracies:
      ax.set_yscale("log")
    ax.set_xlabel("validation accuracy after the quality steps")
    ax.set_title(f"{anchor}: {len(accuracies)} trained, {untrained} "
                 "rejected earlier", fontsize=9)
  axes[0][0].set_ylabel("random layers")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def progress_curve(records, top: int = 10):
  """(candidates evaluated, mean average accuracy of the best ``top``)."""
  xs, ys, scores = [], [], []
  for i, record in enumerate(records, start=1):
    if record.get("status") == "accepted":
      scores.append(evolution.average_fitness(record))
      scores.sort(reverse=True)
      del scores[top:]
    if scores:
      xs.append(i)
      ys.append(float(np.mean(scores)))
  return xs, ys


def plot_progress(runs: Mapping[str, Sequence[dict]], path, top: int = 10):
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, records in runs.items():
    xs, ys = progress_curve(records, top)
    ax.plot(xs, ys, label=label)
  ax.set_xlabel("candidates evaluated")
  ax.set_ylabel(f"mean accuracy of the {top} best layers\n"
                "(averaged over anchors)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_pareto(records, anchors, path):
  plt = _plt()
  pairs = [(a, b) for i, a in enumerate(anchors) for b in anchors[i + 1:]]
  accepted = store_lib.accepted(records)
  front = evolution.pareto_front(accepted) if accepted else []
  if not pairs:  # one anchor: the front is the best layer
    pairs = [(anchors[0], anchors[0])]
  fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.6),
                           squeeze=False)
  for ax, (a, b) in zip(axes[0], pairs):
    ax.scatter([r["fitness"][a] for r in accepted],
               [r["fitness"][b] for r in accepted], s=12, alpha=0.5,
               label="accepted layers")
    ax.scatter([r["fitness"][a] for r in front],
               [r["fitness"][b] for r in front], s=30, color="tab:red",
               label="Pareto front")
    ax.set_xlabel(f"{a} accuracy")
    ax.set_ylabel(f"{b} accuracy")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _median(values):
  return statistics.median(values) if values else None


def _seconds(value) -> str:
  return "-" if value is None else f"{value:.2f} s"


def rejection_text(record: dict) -> str:
  """Why a record was rejected, in a few words."""
  detail = record.get("rejection") or {}
  if record.get("reason") == "stability":
    return (f"stability: gradient norm {detail.get('grad_norm', 0):.3g} at "
            f"ascent step {detail.get('steps')}")
  if record.get("reason") == "quality" and "anchor" in detail:
    return (f"quality: {detail['anchor']} at {detail['accuracy']:.3f} after "
            "the quality steps")
  if detail.get("stage") == "probe":
    return "probe: " + detail.get("detail", f"{record.get('reason')}")
  return f"{record.get('reason')}: {detail}"


def rejection_costs(records) -> dict:
  """Median seconds of rejected vs fully evaluated candidates (None when
  there are none), and the median seconds per stage of each kind."""
  fresh = [r for r in records if r.get("cached_from") is None and
           "seconds" in r]
  kinds = {"rejected": [r for r in fresh if r.get("status") == "rejected"],
           "accepted": [r for r in fresh if r.get("status") == "accepted"]}
  # Rejected before any proxy training (probe, graph inspection): free.
  kinds["rejected after the probe"] = [
      r for r in kinds["rejected"]
      if (r.get("rejection") or {}).get("stage") != "probe"]
  costs = {f"{kind}_median_s": _median([r["seconds"]["total"] for r in rs])
           for kind, rs in kinds.items()}
  costs["stages"] = {
      kind: {stage: _median([r["seconds"].get(stage, 0.0) for r in rs])
             for stage in STAGES + ("total",)}
      for kind, rs in kinds.items() if rs}
  costs["setup"] = _median([r["seconds"]["setup"] for r in fresh
                            if "setup" in r["seconds"]])
  rejected, accepted = (costs["rejected_median_s"],
                        costs["accepted_median_s"])
  costs["ratio"] = (rejected / accepted if rejected is not None and accepted
                    else None)
  return costs


def stage_table(costs: dict) -> list[str]:
  """Markdown rows: median seconds per stage for each kind of candidate."""
  lines = ["| candidates | " + " | ".join(STAGES) + " | total |",
           "|---|" + "---:|" * (len(STAGES) + 1)]
  for kind, stages in costs["stages"].items():
    lines.append(f"| {kind} | " + " | ".join(
        _seconds(stages[s]) for s in STAGES + ("total",)) + " |")
  return lines


def worker_memory_text(records) -> str | None:
  """The workers' resident memory after each evaluation (records'
  ``worker_rss_mib``), as one line: the largest, and how the worker that
  reached it grew; None without measurements."""
  by_worker: dict[str, list[float]] = {}
  for r in records:
    if r.get("worker_rss_mib") is not None and r.get("worker"):
      by_worker.setdefault(r["worker"], []).append(r["worker_rss_mib"])
  if not by_worker:
    return None
  worker, values = max(by_worker.items(), key=lambda item: max(item[1]))
  return (f"Workers' resident memory: at most {max(values):.0f} MiB "
          f"({len(by_worker)} worker processes; {worker}: {values[0]:.0f} "
          f"MiB after its first evaluation, {values[-1]:.0f} MiB after its "
          f"last, {len(values)} evaluations).")


def _no_accepted_advice(records, reasons) -> list[str]:
  """What to do when no candidate passed the protocols."""
  examples = [f"- `{r['formula']}`: {rejection_text(r)}"
              for r in records if r.get("status") == "rejected" and
              (r.get("rejection") or {}).get("stage") != "probe"][:5]
  return [
      "**No candidate was accepted yet**, so the population has no fitness "
      "and evolution has nothing to select: "
      + (", ".join(f"{n} rejected by {k}" for k, n in sorted(reasons.items()))
         or "nothing was evaluated") + ".", "",
      *(["Rejections past the probe:", "", *examples, ""] if examples else []),
      "Next steps: most random layers fail (about 1 in 90 passes every "
      "protocol), so evaluate more candidates (`--resume "
      "--max_candidates=N`), or warm-start from known layers "
      "(`--seed_layers=bn_relu,evonorm_b0`); if good layers are rejected "
      "too, check the proxy with `python -m evonorm_layers.search.calibrate` "
      "and the same proxy flags.", ""]


def write_report(output_dir: str, config: dict, records: Sequence[dict],
                 rerank: Mapping[int, dict] | None = None,
                 compare: Mapping[str, Sequence[dict]] | None = None,
                 top_k: int = 10,
                 baselines: Mapping[str, dict] | None = None) -> str:
  """Writes the plots, report.md and best_layers.json; returns report.md."""
  anchors = list(config["proxy"]["anchors"])
  plot_random_histograms(records, anchors,
                         os.path.join(output_dir, "figure2_random_layers.png"))
  plot_progress({config["algorithm"]: records, **(compare or {})},
                os.path.join(output_dir, "figure6_progress.png"))
  plot_pareto(records, anchors, os.path.join(output_dir, "pareto_front.png"))

  top = best(records, top_k)
  if rerank:
    top.sort(key=lambda r: -rerank.get(r["id"], {}).get("score", -1.0))
  with open(os.path.join(output_dir, "best_layers.json"), "w") as f:
    json.dump({layer_name(r): r["graph"] for r in top}, f, indent=1)

  reasons: dict[str, int] = {}
  for r in records:
    if r.get("status") == "rejected":
      reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
  costs = rejection_costs(records)
  baselines = dict(baselines or {})
  accepted_count = len(store_lib.accepted(records))
  lines = [
      "# Layer search report", "",
      f"Algorithm: {config['algorithm']} (criterion {config['criterion']}, "
      f"population {config['population']}, tournament "
      f"{config['tournament']}); {'batch-independent' if config['batch_independent'] else 'all'} "
      f"primitives; anchors {', '.join(anchors)}"
      + (f"; seeded with {', '.join(config.get('seed_layers') or ())}"
         if config.get("seed_layers") else "") + ".", "",
      f"Candidates evaluated: {len(records)}; accepted: "
      f"{accepted_count}; rejected: "
      + (", ".join(f"{n} by {k}" for k, n in sorted(reasons.items()))
         or "none")
      + f"; reused from an equivalent layer: "
      f"{sum(r.get('cached_from') is not None for r in records)}.", "",
      "Median cost: rejected " + _seconds(costs["rejected_median_s"]) +
      " (those reaching the stability test: "
      + _seconds(costs["rejected after the probe_median_s"]) +
      "), fully evaluated " + _seconds(costs["accepted_median_s"]) +
      ("" if costs["ratio"] is None else f" (ratio {costs['ratio']:.3f})")
      + "; one-off setup per worker (building and tracing the anchors) "
      + _seconds(costs["setup"]) + ".", "",
      "Median seconds per stage:", "", *stage_table(costs), "",
  ]
  memory = worker_memory_text(records)
  if memory:
    lines += [memory, ""]
  if not accepted_count:
    lines += _no_accepted_advice(records, reasons)
  if baselines:
    lines += ["## Known layers under the same proxy", "",
              "| layer | status | " + " | ".join(anchors) + " | average |",
              "|---|---|" + "---:|" * (len(anchors) + 1)]
    for name, b in baselines.items():
      fitness = b.get("fitness") or {}
      scores = " | ".join(f"{fitness[a]:.3f}" if a in fitness else "-"
                          for a in anchors)
      average = (f"{evolution.average_fitness(b):.3f}" if fitness else "-")
      status = ("accepted" if b.get("status") == "accepted"
                else "rejected (" + rejection_text(b) + ")")
      label = (f"{name} `{b['formula']}`" if name.startswith("seed_")
               else name)
      lines.append(f"| {label} | {status} | {scores} | {average} |")
    lines.append("")
  best_known = max((evolution.average_fitness(b) for b in baselines.values()
                    if b.get("fitness")), default=None)
  lines += [
      "## Best layers", "",
      "| rank | name | layer | " + " | ".join(anchors) + " | average |"
      + (" vs best known |" if best_known is not None else "")
      + (" held-out (re-ranked) |" if rerank else ""),
      "|---|---|---|" + "---:|" * (len(anchors) + 1)
      + ("---:|" if best_known is not None else "")
      + ("---:|" if rerank else ""),
  ]
  for rank, r in enumerate(top, start=1):
    scores = " | ".join(f"{r['fitness'][a]:.3f}" for a in anchors)
    held_out = (f" {rerank[r['id']]['score']:.3f} |"
                if rerank and r["id"] in rerank else
                (" - |" if rerank else ""))
    versus = (f" {evolution.average_fitness(r) - best_known:+.3f} |"
              if best_known is not None else "")
    lines.append(f"| {rank} | `{layer_name(r)}` | `{r['formula']}` | "
                 f"{scores} | {evolution.average_fitness(r):.3f} |{versus}"
                 f"{held_out}")
  lines += ["", "LaTeX (before the affine `* gamma + beta`):", ""]
  for r in top:
    latex = LayerGraph.from_dict(r["graph"]).formula(latex=True)
    lines.append(f"- `{layer_name(r)}`: $${latex}$$")
  example = layer_name(top[0]) if top else "searched_..."
  lines += ["", "Use them in any model of this project:", "", "```python",
            "import evonorm_layers",
            "from evonorm_layers.search import load_searched_layers",
            "load_searched_layers('best_layers.json')",
            "layer = evonorm_layers.get_norm_activation("
            f"'{example}')", "```",
            "", "or in a Model Garden experiment:", "", "```bash",
            "python -m evonorm_vision.train --searched_layers=best_layers.json "
            "--params_override=task.model.norm_activation.type="
            f"{example} ...", "```",
            "", "![random layers](figure2_random_layers.png)",
            "![progress](figure6_progress.png)",
            "![Pareto front](pareto_front.png)", ""]
  path = os.path.join(output_dir, REPORT)
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
