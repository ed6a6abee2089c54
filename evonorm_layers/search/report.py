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

import os
import statistics
from typing import Mapping, Sequence


from evonorm_layers.search import evolution
from evonorm_layers.search import store as store_lib
from evonorm_layers.search.graph import LayerGraph

RERANK_LOG = "rerank.jsonl"
BASELINE_LOG = "baselines.jsonl"
REPORT = "report.md"  # written last: a search with one has finished
# Known layers every search evaluates first, under its own proxy.
BASELINES = ("bn_relu", "evonorm_b0", "evonorm_s0")
STAGES = ("probe", "stability", "quality", "training", "evaluation")
REJECTION_STAGES = STAGES + ("error",)
FIGURES = {"figure2_random_layers.png": "random layers' accuracy",
           "figure6_progress.png": "search progress",
           "pareto_front.png": "Pareto front"}


def found(records: Sequence[dict],
          known: Sequence[dict] = ()) -> list[dict]:
  """The accepted records that are layers the search found: not a warm
  start's seed layers, not reused from an equivalent candidate, and not
  equivalent (same canonical graph or same probe outputs) to a ``known``
  layer, i.e. a baseline or seed record."""
  known = [r for r in known if r] + [r for r in records
                                     if r.get("origin") == "seed"]
  fingerprints = {r.get("fingerprint") for r in known} - {None}
  probes = {r.get("probe") for r in known} - {None}
  return [r for r in store_lib.accepted(records)
          if r.get("origin") != "seed" and r.get("cached_from") is None
          and r.get("fingerprint") not in fingerprints
          and r.get("probe") not in probes]


def best(records: Sequence[dict], k: int,
         known: Sequence[dict] = ()) -> list[dict]:
  """The ``k`` found (see :func:`found`), distinct layers with the best
  average accuracy."""
  seen, result = set(), []
  for record in sorted(found(records, known),
                       key=evolution.average_fitness, reverse=True):
    if record["fingerprint"] in seen:
      continue
    seen.add(record["fingerprint"])
    result.append(record)
  return result[:k]


def rejection_stage(record: dict) -> str:
  """The protocol stage that rejected a record: probe, stability, quality,
  training, evaluation, or error."""
  stage = (record.get("rejection") or {}).get("stage")
  return stage or {"stability": "stability", "quality": "quality"}.get(
      record.get("reason"), record.get("reason") or "error")


def layer_name(record: dict) -> str:
  return f"searched_{record['fingerprint']}"


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_random_histograms(records, anchors, path) -> bool:
  """The accuracy histograms of random layers per anchor (Figure 2); draws
  nothing (returns False) when no random layer was trained."""
  random = [r for r in records if r.get("origin") == "random"]
  if not any(r.get("quality") for r in random):
    return False
  plt = _plt()
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
  return True


def progress_curve(records, known: Sequence[dict] = ()):
  """(candidates evaluated, the best average accuracy found so far): the
  paper's Figure 6 for one run, a curve that can only rise. Seeds and
  layers equivalent to a known one count as candidates, not as finds."""
  finds = {id(r) for r in found(records, known)}
  xs, ys, best_so_far = [], [], None
  for i, record in enumerate(records, start=1):
    if id(record) in finds:
      score = evolution.average_fitness(record)
      best_so_far = score if best_so_far is None else max(best_so_far, score)
    if best_so_far is not None:
      xs.append(i)
      ys.append(best_so_far)
  return xs, ys


def plot_progress(runs: Mapping[str, Sequence[dict]], path,
                  known: Sequence[dict] = ()) -> bool:
  """Draws every run's progress curve; draws nothing (returns False) when
  no run has found a layer yet."""
  curves = {label: progress_curve(records, known)
            for label, records in runs.items()}
  if not any(xs for xs, _ in curves.values()):
    return False
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, (xs, ys) in curves.items():
    if xs:
      ax.step(xs, ys, where="post", label=label)
  ax.set_xlabel("candidates evaluated")
  ax.set_ylabel("best accuracy found so far\n(averaged over anchors)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_pareto(records, anchors, path, known: Sequence[dict] = ()) -> bool:
  """Found layers by accuracy on each pair of anchors, the Pareto front
  highlighted and the known layers (baselines, seeds) marked; draws nothing
  (returns False) when no layer was found."""
  finds = found(records, known)
  if not finds:
    return False
  plt = _plt()
  pairs = [(a, b) for i, a in enumerate(anchors) for b in anchors[i + 1:]]
  front = evolution.pareto_front(finds)
  references = [r for r in known if r and r.get("fitness")]
  if not pairs:  # one anchor: the front is the best layer
    pairs = [(anchors[0], anchors[0])]
  fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.6),
                           squeeze=False)
  for ax, (a, b) in zip(axes[0], pairs):
    ax.scatter([r["fitness"][a] for r in finds],
               [r["fitness"][b] for r in finds], s=12, alpha=0.5,
               label="found layers")
    ax.scatter([r["fitness"][a] for r in front],
               [r["fitness"][b] for r in front], s=30, color="tab:red",
               label="Pareto front")
    for r in references:
      ax.scatter(r["fitness"][a], r["fitness"][b], marker="x", color="gray")
      ax.annotate(r.get("layer", "seed"), (r["fitness"][a], r["fitness"][b]),
                  fontsize=7, color="gray", xytext=(3, 3),
                  textcoords="offset points")
    ax.set_xlabel(f"{a} accuracy")
    ax.set_ylabel(f"{b} accuracy")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


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
  kinds["rejected_past_probe"] = [
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


def _nothing_found_advice(records, stages) -> list[str]:
  """What to do when the search has found no layer yet."""
  examples = [f"- `{r['formula']}`: {rejection_text(r)}"
              for r in records if r.get("status") == "rejected" and
              rejection_stage(r) != "probe"][:5]
  return [
      "**No layer was found yet** (seed layers and layers equivalent to a "
      "known one do not count): "
      + (", ".join(f"{stages[k]} rejected at the {k} stage"
                   for k in REJECTION_STAGES if k in stages)
         or "nothing was rejected") + ".", "",
      *(["Rejections past the probe:", "", *examples, ""] if examples else []),
      "Next steps: most random layers fail (about 1 in 90 passes every "
      "protocol), so evaluate more candidates (`--resume "
      "--max_candidates=N`), or warm-start from known layers "
      "(`--seed_layers=bn_relu,evonorm_b0`, the default of evolution); if "
      "good layers are rejected too, check the proxy with "
      "`python -m evonorm_layers.search.calibrate` and the same proxy "
      "flags.", ""]


def write_report(output_dir: str, config: dict, records: Sequence[dict],
                 rerank: Mapping[int, dict] | None = None,
                 compare: Mapping[str, Sequence[dict]] | None = None,
                 top_k: int = 10,
                 baselines: Mapping[str, dict] | None = None) -> str:
  """Writes the plots, report.md and best_layers.json; returns report.md."""
  anchors = list(config["proxy"]["anchors"])
  baselines = dict(baselines or {})
  known = list(baselines.values())
  figures = _draw_figures(output_dir, config, records, anchors, known,
                          compare)
  top = best(records, top_k, known)
  if rerank:
    top.sort(key=lambda r: -rerank.get(r["id"], {}).get("score", -1.0))
  store_lib.write_json_atomic(os.path.join(output_dir, "best_layers.json"),
                              {layer_name(r): r["graph"] for r in top})
  lines = _summary(config, records, anchors, known)
  if baselines:
    lines += _known_layers_table(baselines, anchors)
  lines += _best_layers_table(top, anchors, baselines, rerank)
  lines += _how_to_use(top)
  for name, drawn in figures.items():
    lines.append(f"![{FIGURES[name]}]({name})" if drawn else
                 f"No {FIGURES[name]} plot: "
                 + ("no random layer was trained." if name.startswith("figure2")
                    else "no layer has been found yet."))
  lines.append("")
  path = os.path.join(output_dir, REPORT)
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def _draw_figures(output_dir, config, records, anchors, known, compare
                  ) -> dict[str, bool]:
  """Draws the report's plots; ``{file name: drawn}`` (a plot with nothing
  to show is not drawn, and an earlier report's copy is removed)."""
  def where(name):
    return os.path.join(output_dir, name)

  figures = {
      "figure2_random_layers.png": plot_random_histograms(
          records, anchors, where("figure2_random_layers.png")),
      "figure6_progress.png": plot_progress(
          {config["algorithm"]: records, **(compare or {})},
          where("figure6_progress.png"), known),
      "pareto_front.png": plot_pareto(records, anchors,
                                      where("pareto_front.png"), known),
  }
  for name, drawn in figures.items():
    if not drawn and os.path.exists(where(name)):
      os.remove(where(name))
  return figures


def _summary(config, records, anchors, known) -> list[str]:
  """The search's settings, what became of its candidates, their costs."""
  stages: dict[str, int] = {}
  for r in records:
    if r.get("status") == "rejected":
      stages[rejection_stage(r)] = stages.get(rejection_stage(r), 0) + 1
  costs = rejection_costs(records)
  found_count = len(found(records, known))
  seeded = (f"; seeded with {', '.join(config['seed_layers'])}"
            if config.get("seed_layers") else "")
  primitives = ("batch-independent" if config["batch_independent"]
                else "all")
  lines = [
      "# Layer search report", "",
      f"Algorithm: {config['algorithm']} (criterion {config['criterion']}, "
      f"population {config['population']}, tournament "
      f"{config['tournament']}); {primitives} primitives; anchors "
      f"{', '.join(anchors)}{seeded}.", "",
      f"Candidates evaluated: {len(records)}; accepted: "
      f"{len(store_lib.accepted(records))}, of which {found_count} are found "
      "layers (not a seed, and not equivalent to a seed or baseline); "
      "rejected: " + (", ".join(f"{stages[k]} at the {k} stage" for k in
                                REJECTION_STAGES if k in stages) or "none")
      + "; reused from an equivalent layer: "
      f"{sum(r.get('cached_from') is not None for r in records)}.", "",
      "Median cost: rejected " + _seconds(costs["rejected_median_s"]) +
      " (those reaching the stability test: "
      + _seconds(costs["rejected_past_probe_median_s"]) +
      "), fully evaluated " + _seconds(costs["accepted_median_s"]) +
      ("" if costs["ratio"] is None else f" (ratio {costs['ratio']:.3f})")
      + "; one-off setup per worker (building and tracing the anchors) "
      + _seconds(costs["setup"]) + ".", "",
      "Median seconds per stage:", "", *stage_table(costs), "",
  ]
  memory = worker_memory_text(records)
  if memory:
    lines += [memory, ""]
  if not found_count:
    lines += _nothing_found_advice(records, stages)
  return lines


def _known_layers_table(baselines, anchors) -> list[str]:
  lines = ["## Known layers under the same proxy", "",
           "| layer | status | " + " | ".join(anchors) + " | average |",
           "|---|---|" + "---:|" * (len(anchors) + 1)]
  for name, b in baselines.items():
    fitness = b.get("fitness") or {}
    scores = " | ".join(f"{fitness[a]:.3f}" if a in fitness else "-"
                        for a in anchors)
    average = f"{evolution.average_fitness(b):.3f}" if fitness else "-"
    status = ("accepted" if b.get("status") == "accepted"
              else "rejected (" + rejection_text(b) + ")")
    label = f"{name} `{b['formula']}`" if name.startswith("seed_") else name
    lines.append(f"| {label} | {status} | {scores} | {average} |")
  return lines + [""]


def _best_layers_table(top, anchors, baselines, rerank) -> list[str]:
  """The best layers, against the best known layer and, once re-ranked,
  their held-out score; then their formulas in LaTeX."""
  best_known = max((evolution.average_fitness(b) for b in baselines.values()
                    if b.get("fitness")), default=None)
  lines = [
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
  return lines


def _how_to_use(top) -> list[str]:
  example = layer_name(top[0]) if top else "searched_..."
  return ["", "Use them in any model of this project:", "", "```python",
          "import evonorm_layers",
          "from evonorm_layers.search import load_searched_layers",
          "load_searched_layers('best_layers.json')",
          f"layer = evonorm_layers.get_norm_activation('{example}')", "```",
          "", "or in a Model Garden experiment:", "", "```bash",
          "python -m evonorm_vision.train --searched_layers=best_layers.json "
          "--params_override=task.model.norm_activation.type="
          f"{example} ...", "```", ""]
