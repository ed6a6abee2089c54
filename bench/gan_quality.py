r"""BigGAN-deep's generator layers compared, the paper's Table 6 in miniature.

Trains the GAN quickstart's experiment (``evonorm_biggan_deep_mnist32``: a
narrow class-conditional BigGAN-deep at 32x32 on ``mnist5k``) with each
layer at every generator norm site, for each seed, at the experiment's fixed
budget of generator steps; then measures each EMA generator (standing
statistics, 1000 samples, 100 per class) with the digits classifier: class
agreement (the fraction of samples it labels as the class they were drawn
for), FID against the 1000 validation digits on its features, and IS.

  python bench/gan_quality.py      # Table 6's six layers, 3 seeds: ~50 min
  python bench/gan_quality.py --layers=bn_relu,evonorm_b0,evonorm_s0

Each run is a process of its own (``--parallel`` at a time, the cores split
between them) and keeps its result in ``--output_dir/runs/NAME.json``, so a
killed benchmark started again redoes only unfinished runs. Writes
``results.json`` and ``gan_quality.png`` (each layer's sample grid, from its
median seed by class agreement) and prints a Markdown table: median over
seeds (min-max).
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
EXPERIMENT = "evonorm_biggan_deep_mnist32"
METRICS = (("class_agreement", "class agreement"),
           ("FID", "FID (lower is better)"), ("IS", "IS"))

flags.DEFINE_list("layers", ["bn_relu", "evonorm_b0", "evonorm_s0",
                             "gn_relu", "ln_relu", "pixelnorm_relu"],
                  "Generator layers (Table 6's rows).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every layer.")
flags.DEFINE_string("params_override", "", "Overrides of every run's "
                    "experiment (e.g. trainer.train_steps=N).")
flags.DEFINE_string("output_dir", "runs/gan_quality", "Runs, results.json "
                    "and the figure.")
flags.DEFINE_integer("parallel", 2, "Runs at once.", lower_bound=1)
flags.DEFINE_string("run", None, "(internal) One run's spec, as JSON.")
PASSED = ("params_override", "output_dir")


def run_name(layer: str, seed: int) -> str:
  return f"{layer}_seed{seed}"


def classifier_dir() -> str:
  return os.path.join(FLAGS.output_dir, "classifier")


def config_for(layer: str, seed: int):
  from evonorm_gan import train as train_lib  # pylint: disable=g-import-not-at-top
  return train_lib.load_config(EXPERIMENT, (), ",".join(filter(None, [
      f"norm_activation.type={layer}", f"trainer.seed={seed}",
      FLAGS.params_override])))


def run_one(layer: str, seed: int, threads: int) -> dict:
  """Trains one GAN and measures its EMA generator."""
  parallel_runs.set_threads(threads)
  from official.common import distribute_utils  # pylint: disable=g-import-not-at-top
  from evonorm_gan import digits_classifier  # pylint: disable=g-import-not-at-top
  from evonorm_gan import evaluation  # pylint: disable=g-import-not-at-top
  from evonorm_gan import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  config = config_for(layer, seed)
  data, resolution = config.data.source, config.generator.resolution
  classifier = evaluation.Classifier(digits_classifier.cached(
      data, resolution, classifier_dir()))
  reals, _ = digits_classifier.real_images(data, resolution)
  model_dir = os.path.join(FLAGS.output_dir, "models", run_name(layer, seed))
  trainer = trainer_lib.GANTrainer(
      config, distribute_utils.get_distribution_strategy("one_device"),
      model_dir)
  start = time.time()
  trainer.train(progress=False)
  minutes = (time.time() - start) / 60
  ev = config.evaluation
  results = evaluation.evaluate(
      trainer.ema_generator, classifier, reals, ev.num_samples,
      ev.batch_size, config.data.num_classes, ev.truncation or None,
      ev.standing_statistics_batches, seed=seed)
  grid = os.path.join(model_dir, "samples.png")
  evaluation.save_png(trainer.sample_grid(per_class=10), grid)
  return {"layer": layer, "seed": seed, **results, "samples": grid,
          "steps": int(trainer.step.numpy()), "train_minutes": minutes}


def _spread(values, digits) -> str:
  return (f"{statistics.median(values):.{digits}f} "
          f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def table(results: list[dict]) -> list[str]:
  lines = ["| generator layer | " + " | ".join(t for _, t in METRICS) +
           " | seeds |", "|---|" + "---:|" * (len(METRICS) + 1)]
  for layer in dict.fromkeys(r["layer"] for r in results):
    runs = [r for r in results if r["layer"] == layer]
    cells = [_spread([r[key] for r in runs], 3 if key == "class_agreement"
                     else 2) for key, _ in METRICS]
    lines.append(f"| {layer} | " + " | ".join(cells) + f" | {len(runs)} |")
  return lines


def median_run(runs: list[dict]) -> dict:
  """The run whose class agreement is the median (the lower middle)."""
  ordered = sorted(runs, key=lambda r: r["class_agreement"])
  return ordered[(len(ordered) - 1) // 2]


def plot(results: list[dict], path: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.image as mpimg  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  layers = list(dict.fromkeys(r["layer"] for r in results))
  columns = min(3, len(layers))
  rows = -(-len(layers) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns,
                                                   3.7 * rows + 0.4),
                           squeeze=False)
  for ax in axes.flat[len(layers):]:
    ax.set_axis_off()
  for ax, layer in zip(axes.flat, layers):
    run = median_run([r for r in results if r["layer"] == layer])
    ax.imshow(mpimg.imread(run["samples"]))
    ax.set_title(f"{layer} (seed {run['seed']})\nclass agreement "
                 f"{run['class_agreement']:.2f}, FID {run['FID']:.1f}",
                 fontsize=8)
    ax.set_axis_off()
  fig.suptitle("BigGAN-deep on mnist5k, one row per class (EMA generator; "
               "each layer's median seed by class agreement)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  runs_dir = os.path.join(FLAGS.output_dir, "runs")
  if parallel_runs.run_child(FLAGS.run, runs_dir, lambda spec, threads: (
      run_name(**spec), run_one(threads=threads, **spec))):
    return
  from evonorm_gan import digits_classifier  # pylint: disable=g-import-not-at-top
  from evonorm_gan import evaluation  # pylint: disable=g-import-not-at-top
  with bench_flags.checked():  # bad layer names or overrides, before any run
    seeds = [int(s) for s in FLAGS.seeds]
    config = None
    for layer in FLAGS.layers:
      config = config_for(layer, seeds[0])
  # Trained once, before the runs that share it.
  digits_classifier.cached(config.data.source, config.generator.resolution,
                           classifier_dir())
  specs = {run_name(layer, seed): {"layer": layer, "seed": seed}
           for layer in FLAGS.layers for seed in seeds}
  results = list(parallel_runs.run_all(
      specs, __file__, parallel_runs.passed_flags(FLAGS, PASSED), runs_dir,
      FLAGS.parallel, "GAN runs").values())
  with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  path = os.path.join(FLAGS.output_dir, "gan_quality.png")
  plot(results, path)
  steps = results[0]["steps"]
  print(f"\nEMA generators after {steps} generator steps, 1000 samples "
        "each (100 per class), measured with the digits classifier; median "
        "over seeds (min-max):\n")
  print("\n".join(table(results)))
  data, resolution = config.data.source, config.generator.resolution
  real = digits_classifier.real_scores(
      evaluation.Classifier(digits_classifier.cached(
          data, resolution, classifier_dir())),
      *digits_classifier.real_images(data, resolution))
  print(f"\nReal validation digits: class agreement "
        f"{real['class_agreement']:.3f}, IS {real['IS']:.2f}.")
  minutes = sum(r["train_minutes"] for r in results)
  print(f"{len(results)} runs, {minutes:.0f} minutes of training in "
        f"{FLAGS.parallel} processes. Samples: {path}")


if __name__ == "__main__":
  bench_flags.run(main)
