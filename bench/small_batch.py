r"""Small batches, the paper's Table 4 in miniature: accuracy against batch.

Trains a narrow pre-activation ResNet (ResNet-18 v2, widths 8 to 64) on
``mnist5k`` through Model Garden's task and trainer (the
``evonorm_resnet_mnist5k`` experiment) at several batch sizes per replica,
with the learning rate scaled linearly with the batch and the same number of
epochs, for each layer and seed; evaluates every run on the 1000 validation
digits (moving statistics at inference). Then, at ``--sync_batch`` images per
replica under MirroredStrategy over ``--replicas`` logical CPU devices, the
batch-dependent layers with per-replica statistics (as the paper's TPU runs)
against synchronized ones; and the layers a search found
(``--searched_layers``, a ``best_layers.json``) at ``--searched_batches``.

  python bench/small_batch.py                      # about 80 minutes
  python bench/small_batch.py --seeds=0 --epochs=1 # a quick look

Each run is a process of its own (``--parallel`` at a time, the cores split
between them); its result is kept in ``--output_dir/runs/NAME.json``, so a
killed benchmark started again with the same flags redoes only the
unfinished runs. A run whose loss becomes NaN is kept as diverged (no
accuracy) and counted in the table. Writes ``results.json`` and
``small_batch.png`` and prints a Markdown table: median validation accuracy
over seeds (min-max).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

import bench_flags  # noqa: E402  (bench/)
import parallel_runs  # noqa: E402  (bench/)

FLAGS = flags.FLAGS
DATASET = "mnist5k"
EXPERIMENT = "evonorm_resnet_mnist5k"
NARROW = ("task.model.backbone.resnet_v2.width_multiplier=0.125,"
          "task.model.norm_activation.groups=8")
SEARCHED = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "docs", "search_quality_best_layers.json")

flags.DEFINE_list("layers", ["bn_relu", "gn_relu", "evonorm_b0",
                             "evonorm_s0"], "Layers at every batch size.")
flags.DEFINE_list("batch_sizes", ["2", "4", "8", "32"],
                  "Images per replica.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every setting.")
flags.DEFINE_integer("epochs", 2, "Passes over the 4000 training images, at "
                     "every batch size.", lower_bound=1)
flags.DEFINE_float("base_learning_rate", 0.4, "SGD learning rate per 256 "
                   "images of global batch.", lower_bound=0)
flags.DEFINE_list("sync_layers", ["bn_relu", "evonorm_b0"], "Batch-dependent "
                  "layers run per-replica and synchronized ('' for none).")
flags.DEFINE_integer("sync_batch", 2, "Images per replica of the "
                     "synchronization runs.", lower_bound=1)
flags.DEFINE_integer("replicas", 4, "Logical CPU devices (replicas) of the "
                     "synchronization runs.", lower_bound=2)
flags.DEFINE_string("searched_layers", SEARCHED, "A best_layers.json whose "
                    "layers also train ('' for none).")
flags.DEFINE_list("searched_batches", ["32", "4"], "Batch sizes of the "
                  "searched layers (and of the layers beside them).")
flags.DEFINE_string("params_override", "", "Further overrides of every run "
                    "(e.g. a smaller validation set for a quick look).")
flags.DEFINE_string("output_dir", "runs/small_batch", "Runs, results.json "
                    "and the plot.")
flags.DEFINE_integer("parallel", 2, "Runs at once.", lower_bound=1)
flags.DEFINE_string("run", None, "(internal) One run's spec, as JSON.")
# The settings every run reads from its own flags.
PASSED = ("epochs", "base_learning_rate", "searched_layers", "params_override",
          "output_dir")


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run."""
  layer: str
  batch: int  # images per replica
  seed: int
  replicas: int = 1
  synchronized: bool = False
  group: str = "batch"  # "batch", "sync" or "searched"

  @property
  def name(self) -> str:
    sync = ("_sync" if self.synchronized else "_local") if (
        self.replicas > 1) else ""
    return (f"{self.layer}_b{self.batch}x{self.replicas}{sync}"
            f"_seed{self.seed}")


def plan() -> list[Run]:
  """Every run the flags ask for, without duplicates."""
  seeds = [int(s) for s in FLAGS.seeds]
  runs = [Run(layer, int(batch), seed) for layer in FLAGS.layers
          for batch in FLAGS.batch_sizes for seed in seeds]
  runs += [Run(layer, FLAGS.sync_batch, seed, FLAGS.replicas, sync, "sync")
           for layer in filter(None, FLAGS.sync_layers)
           for sync in (False, True) for seed in seeds]
  if FLAGS.searched_layers:
    for name in searched_names(FLAGS.searched_layers):
      runs += [Run(name, int(batch), seed, group="searched")
               for batch in FLAGS.searched_batches for seed in seeds]
  unique = {}
  for run in runs:
    unique.setdefault(run.name, run)
  return list(unique.values())


def searched_names(path: str) -> list[str]:
  if not os.path.exists(path):
    raise FileNotFoundError(f"--searched_layers={path!r} does not exist: "
                            "give a search's best_layers.json, or '' to skip "
                            "the searched layers.")
  with open(path) as f:
    return sorted(json.load(f))


# -- one run, in its own process ---------------------------------------------


def run_one(run: Run, output_dir: str, threads: int) -> dict:
  """Trains and evaluates one run; returns its result."""
  parallel_runs.set_threads(threads)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if run.replicas > 1:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * run.replicas)
  import tf_keras  # pylint: disable=g-import-not-at-top
  from evonorm_model_garden import experiments  # pylint: disable=g-import-not-at-top
  from evonorm_model_garden import run_training  # pylint: disable=g-import-not-at-top
  from evonorm_vision.configs import image_classification as exp_configs  # pylint: disable=g-import-not-at-top

  data_dir = os.path.join(output_dir, "data")  # written by main()
  overrides = ",".join(filter(None, [
      f"task.model.norm_activation.type={run.layer}",
      f"task.model.norm_activation.use_sync_bn={run.synchronized}",
      NARROW,
      exp_configs.offline_overrides(DATASET, data_dir, FLAGS.epochs,
                                    run.batch, run.replicas,
                                    FLAGS.base_learning_rate),
      f"task.train_data.seed={run.seed}",
      f"runtime.distribution_strategy="
      f"{'mirrored' if run.replicas > 1 else 'one_device'}",
      FLAGS.params_override]))
  params = experiments.load_params(
      EXPERIMENT, (), overrides,
      [FLAGS.searched_layers] if run.group == "searched" else ())
  tf_keras.utils.set_random_seed(run.seed)
  strategy = (tf.distribute.MirroredStrategy(
      [f"/cpu:{i}" for i in range(run.replicas)]) if run.replicas > 1
              else None)
  start = time.time()
  try:
    accuracy = float(run_training.train_and_evaluate(
        params, os.path.join(output_dir, "models", run.name), desc=run.name,
        strategy=strategy, progress=False)["accuracy"])
  except RuntimeError as e:  # Model Garden stops at a NaN loss
    if "NaN" not in str(e):
      raise
    accuracy = None  # diverged: a result, not a failure of the benchmark
  return {**dataclasses.asdict(run), "name": run.name,
          "accuracy": accuracy, "diverged": accuracy is None,
          "steps": int(params.trainer.train_steps),
          "minutes": (time.time() - start) / 60}


def _spread(runs) -> str:
  """Median accuracy (min-max) of the runs that finished, and how many
  diverged (a NaN loss)."""
  values = [r["accuracy"] for r in runs if r["accuracy"] is not None]
  diverged = len(runs) - len(values)
  cell = (f"{statistics.median(values):.3f} ({min(values):.3f}-"
          f"{max(values):.3f})") if values else "-"
  return cell + (f", {diverged} of {len(runs)} diverged" if diverged else "")


def table(results: list[dict]) -> list[str]:
  """Markdown: median accuracy over seeds (min-max) per layer and batch."""
  lines = []
  batch_runs = [r for r in results if r["group"] in ("batch", "searched")]
  batches = sorted({r["batch"] for r in batch_runs})
  layers = list(dict.fromkeys(r["layer"] for r in batch_runs))
  lines += ["| layer | " + " | ".join(f"batch {b}" for b in batches) + " |",
            "|---|" + "---:|" * len(batches)]
  for layer in layers:
    cells = []
    for b in batches:
      runs = [r for r in batch_runs
              if r["layer"] == layer and r["batch"] == b]
      cells.append(_spread(runs) if runs else "-")
    lines.append(f"| {layer} | " + " | ".join(cells) + " |")
  sync_runs = [r for r in results if r["group"] == "sync"]
  if sync_runs:
    r0 = sync_runs[0]
    lines += ["", f"{r0['batch']} images per replica on {r0['replicas']} "
              "replicas (MirroredStrategy over logical CPU devices):", "",
              "| layer | per-replica statistics | synchronized statistics |",
              "|---|---:|---:|"]
    for layer in dict.fromkeys(r["layer"] for r in sync_runs):
      cells = [_spread([r for r in sync_runs
                        if r["layer"] == layer and r["synchronized"] == sync])
               for sync in (False, True)]
      lines.append(f"| {layer} | " + " | ".join(cells) + " |")
  return lines


def plot(results: list[dict], path: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  batch_runs = [r for r in results if r["group"] in ("batch", "searched")]
  for layer in dict.fromkeys(r["layer"] for r in batch_runs):
    runs = [r for r in batch_runs if r["layer"] == layer]
    diverged = sum(r["accuracy"] is None for r in runs)
    runs = [r for r in runs if r["accuracy"] is not None]
    batches = sorted({r["batch"] for r in runs})
    values = [[r["accuracy"] for r in runs if r["batch"] == b]
              for b in batches]
    searched = layer.startswith("searched_")
    label = layer + (f" ({diverged} diverged)" if diverged else "")
    line, = ax.plot(batches, [statistics.median(v) for v in values],
                    marker="o", linestyle="--" if searched else "-",
                    label=label)
    ax.fill_between(batches, [min(v) for v in values],
                    [max(v) for v in values], color=line.get_color(),
                    alpha=0.15)
  for r in results:
    if r["group"] == "sync" and r["accuracy"] is not None:
      ax.scatter(r["batch"], r["accuracy"], marker="^" if r["synchronized"]
                 else "v", color="black", s=14, zorder=3)
  ax.scatter([], [], marker="v", color="black", s=14,
             label="4 replicas, per-replica statistics")
  ax.scatter([], [], marker="^", color="black", s=14,
             label="4 replicas, synchronized")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("images per replica (learning rate scaled linearly)")
  ax.set_ylabel("validation accuracy (1000 digits)")
  ax.set_title("ResNet-18 v2 (widths 8-64) on mnist5k: median and range of "
               "seeds", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  runs_dir = os.path.join(FLAGS.output_dir, "runs")
  if parallel_runs.run_child(FLAGS.run, runs_dir, lambda spec, threads: (
      Run(**spec).name, run_one(Run(**spec), FLAGS.output_dir, threads))):
    return
  from evonorm_vision.data import offline as offline_data  # pylint: disable=g-import-not-at-top
  with bench_flags.checked(("layers", "sync_layers")):
    runs = plan()
  # Once, before the runs that read them (runs at once would race).
  offline_data.write_tfrecords(DATASET,
                               os.path.join(FLAGS.output_dir, "data"))
  by_name = parallel_runs.run_all(
      {r.name: dataclasses.asdict(r) for r in runs}, __file__,
      parallel_runs.passed_flags(FLAGS, PASSED), runs_dir, FLAGS.parallel,
      "small batches")
  results = list(by_name.values())
  with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
    json.dump({"epochs": FLAGS.epochs,
               "base_learning_rate": FLAGS.base_learning_rate,
               "results": results}, f, indent=1)
  path = os.path.join(FLAGS.output_dir, "small_batch.png")
  plot(results, path)
  print(f"\nValidation accuracy on mnist5k after {FLAGS.epochs} epochs, "
        "median over seeds (min-max):\n")
  print("\n".join(table(results)))
  minutes = sum(r["minutes"] for r in results)
  print(f"\n{len(results)} runs, {minutes:.0f} minutes of training "
        f"(in {FLAGS.parallel} processes). Plot: {path}")


if __name__ == "__main__":
  bench_flags.run(main)
