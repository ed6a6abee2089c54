r"""Mask R-CNN's layers compared at 2 images per replica (Table 5's regime).

Trains the detection quickstart's experiment (a narrow ResNet-18-FPN Mask
R-CNN on the generated shapes, ``evonorm_maskrcnn_shapes_quickstart``) with
each layer at every norm site, for each seed, under MirroredStrategy over
``--replicas`` logical CPU devices at ``--per_replica`` images each, with
per-replica batch statistics (``--sync`` for synchronized ones); then
measures COCO box and mask AP with Model Garden's evaluator, and, through
the exported and reloaded SavedModel on the 64 validation images, how many
objects are found and how often with the right class (one box per object,
:mod:`evonorm_detection.predictions`).

  python bench/detection_quality.py     # BN-ReLU, EvoNorm-B0, S0; 3 seeds

Each run is a process of its own (``--parallel`` at a time) and keeps its
result in ``--output_dir/runs/NAME.json``: a killed benchmark started again
redoes only unfinished runs. Writes ``results.json`` and prints a Markdown
table (median over seeds, min-max) and ``detection_quality.png``.
"""

from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

import bench_flags  # noqa: E402  (bench/)
import parallel_runs  # noqa: E402  (bench/)

FLAGS = flags.FLAGS
METRICS = (("box_ap", "box AP"), ("mask_ap", "mask AP"),
           ("box_ap50", "box AP50"), ("recall", "objects found"),
           ("class_accuracy", "right class (of found)"))

flags.DEFINE_list("layers", ["bn_relu", "evonorm_b0", "evonorm_s0"],
                  "Layers at every norm site.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every layer.")
flags.DEFINE_integer("epochs", 10, "Passes over the 256 training images.",
                     lower_bound=1)
flags.DEFINE_integer("replicas", 4, "Logical CPU devices (replicas).",
                     lower_bound=1)
flags.DEFINE_integer("per_replica", 2, "Training images per replica.",
                     lower_bound=1)
flags.DEFINE_bool("sync", False, "Synchronize batch statistics across the "
                  "replicas (default: per replica, as the authors' TPU "
                  "code).")
flags.DEFINE_string("params_override", "", "Further overrides of every run.")
flags.DEFINE_string("output_dir", "runs/detection_quality", "Data, runs and "
                    "results.json.")
flags.DEFINE_integer("parallel", 2, "Runs at once.", lower_bound=1)
flags.DEFINE_string("run", None, "(internal) One run's spec, as JSON.")
PASSED = ("epochs", "replicas", "per_replica", "sync", "params_override",
          "output_dir")


def run_name(layer: str, seed: int) -> str:
  return f"{layer}_seed{seed}"


def data_dir() -> str:
  return os.path.join(FLAGS.output_dir, "data")


def params_for(layer: str, seed: int):
  from evonorm_detection import quickstart_lib  # pylint: disable=g-import-not-at-top
  batch = FLAGS.replicas * FLAGS.per_replica
  return quickstart_lib.experiment_params(
      layer, data_dir(), FLAGS.epochs, ",".join(filter(None, [
          f"task.train_data.global_batch_size={batch}",
          f"task.validation_data.global_batch_size={batch}",
          f"task.model.norm_activation.use_sync_bn={FLAGS.sync}",
          f"task.train_data.seed={seed}", FLAGS.params_override])))


def run_one(layer: str, seed: int, threads: int) -> dict:
  parallel_runs.set_threads(threads)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if FLAGS.replicas > 1:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * FLAGS.replicas)
  import tf_keras  # pylint: disable=g-import-not-at-top
  from evonorm_detection import predictions  # pylint: disable=g-import-not-at-top
  from evonorm_detection import quickstart_lib  # pylint: disable=g-import-not-at-top
  from evonorm_model_garden import export  # pylint: disable=g-import-not-at-top
  from evonorm_model_garden import run_training  # pylint: disable=g-import-not-at-top
  params = params_for(layer, seed)
  tf_keras.utils.set_random_seed(seed)
  strategy = tf.distribute.MirroredStrategy(
      [f"/cpu:{i}" for i in range(FLAGS.replicas)])
  name = run_name(layer, seed)
  model_dir = os.path.join(FLAGS.output_dir, "models", name)
  start = time.time()
  logs = run_training.train_and_evaluate(params, model_dir, desc=name,
                                         strategy=strategy, progress=False)
  minutes = (time.time() - start) / 60
  export_dir = os.path.join(FLAGS.output_dir, "export", name)
  with run_training.logs_to(os.path.join(model_dir, "train.log")):
    export.export(params, model_dir, export_dir)
  _, _, _, counts = quickstart_lib.read_predictions(export_dir, data_dir())
  return {"layer": layer, "seed": seed, "box_ap": float(logs["AP"]),
          "mask_ap": float(logs["mask_AP"]), "box_ap50": float(logs["AP50"]),
          **predictions.confusion_summary(counts),
          "confusion": counts.tolist(), "train_minutes": minutes,
          "steps": int(params.trainer.train_steps)}


def _spread(values) -> str:
  return (f"{statistics.median(values):.3f} ({min(values):.3f}-"
          f"{max(values):.3f})")


def table(results: list[dict]) -> list[str]:
  lines = ["| layer | " + " | ".join(t for _, t in METRICS) + " |",
           "|---|" + "---:|" * len(METRICS)]
  for layer in dict.fromkeys(r["layer"] for r in results):
    runs = [r for r in results if r["layer"] == layer]
    lines.append(f"| {layer} | " + " | ".join(
        _spread([r[key] for r in runs]) for key, _ in METRICS) + " |")
  return lines


def plot(results: list[dict], path: str):
  """Each metric per layer: every seed as a dot, the median as a bar."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  layers = list(dict.fromkeys(r["layer"] for r in results))
  fig, axes = plt.subplots(1, len(METRICS), figsize=(2.6 * len(METRICS), 3.4),
                           sharey=True)
  for ax, (key, title) in zip(axes, METRICS):
    for i, layer in enumerate(layers):
      values = [r[key] for r in results if r["layer"] == layer]
      ax.bar(i, statistics.median(values), color=f"C{i}", alpha=0.5)
      ax.scatter([i] * len(values), values, color=f"C{i}", s=12, zorder=3)
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right",
                  fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
  fig.suptitle(f"Mask R-CNN on the generated shapes, {FLAGS.per_replica} "
               "images per replica: median (bar) and seeds (dots)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  runs_dir = os.path.join(FLAGS.output_dir, "runs")
  if parallel_runs.run_child(FLAGS.run, runs_dir, lambda spec, threads: (
      run_name(**spec), run_one(threads=threads, **spec))):
    return
  from evonorm_detection.data import shapes  # pylint: disable=g-import-not-at-top
  with bench_flags.checked():  # bad layer names or overrides, before any run
    seeds = [int(s) for s in FLAGS.seeds]
    for layer in FLAGS.layers:
      params_for(layer, seeds[0])
  shapes.write_shapes_dataset(data_dir())  # once, before the runs
  specs = {run_name(layer, seed): {"layer": layer, "seed": seed}
           for layer in FLAGS.layers for seed in seeds}
  results = list(parallel_runs.run_all(
      specs, __file__, parallel_runs.passed_flags(FLAGS, PASSED), runs_dir,
      FLAGS.parallel, "detection runs").values())
  with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  path = os.path.join(FLAGS.output_dir, "detection_quality.png")
  plot(results, path)
  r0 = results[0]
  print(f"\nMask R-CNN on the generated shapes after {r0['steps']} steps at "
        f"{FLAGS.per_replica} images per replica on {FLAGS.replicas} "
        f"replicas ({'synchronized' if FLAGS.sync else 'per-replica'} "
        "statistics); COCO AP on the 64 validation images, and the "
        f"{r0['objects']} objects found with the right class (reloaded "
        "SavedModel, one box per object); median over seeds (min-max):\n")
  print("\n".join(table(results)))
  minutes = sum(r["train_minutes"] for r in results)
  print(f"\n{len(results)} runs, {minutes:.0f} minutes of training in "
        f"{FLAGS.parallel} processes. Plot: {path}")


if __name__ == "__main__":
  bench_flags.run(main)
