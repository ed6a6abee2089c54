r"""GAN quickstart: a small class-conditional BigGAN-deep on digits, on a CPU.

  python -m evonorm_gan.quickstart              # EvoNorm-B0, a few minutes
  python -m evonorm_gan.quickstart --compare    # BN-ReLU vs EvoNorm-B0 vs S0

Trains the ``evonorm_biggan_deep_mnist32`` experiment (a narrow
class-conditional BigGAN-deep at 32x32 on the 4000 training digits of
``mnist5k``) with the chosen layer at every generator norm site,
class-conditional through the layer's call-time affine; accumulates
standing statistics; saves a grid of generated digits, one row per class
(``WORKDIR/<layer>/samples.png``); exports the EMA generator as a SavedModel
and reloads it; and measures 1000 samples (100 per class) with a small
digits classifier trained once on the real training digits and cached
(``~/evonorm_data/digits_classifier``): class agreement (the fraction
labelled as the class they were drawn for), FID on its features and IS.
``--compare`` trains the three layers under identical settings, prints a
table and saves ``WORKDIR/compare.png``. The settings and why:
``docs/gan.md``.
"""

from __future__ import annotations

import contextlib
import os

from absl import flags
import numpy as np
import tensorflow as tf
import tf_keras
from official.common import distribute_utils

from evonorm_gan import digits_classifier
from evonorm_gan import evaluation
from evonorm_gan import export
from evonorm_gan import train as train_lib
from evonorm_gan import trainer as trainer_lib
from evonorm_model_garden import cli

EXPERIMENT = "evonorm_biggan_deep_mnist32"
COMPARED = ("bn_relu", "evonorm_b0", "evonorm_s0")

_LAYERS = flags.DEFINE_list("layers", ["evonorm_b0"], "Layers to train.")
_COMPARE = flags.DEFINE_bool("compare", False,
                             f"Train {', '.join(COMPARED)} and compare.")
_WORKDIR = flags.DEFINE_string("workdir", "evonorm_gan_quickstart",
                               "Checkpoints, samples and exports.")
_STEPS = flags.DEFINE_integer("steps", None, "Generator steps (default: the "
                              "experiment's).", lower_bound=1)
_OVERRIDE = flags.DEFINE_string("params_override", "",
                                "Further experiment overrides.")
_CLASSIFIER_DIR = flags.DEFINE_string(
    "classifier_dir", digits_classifier.CACHE_DIR,
    "Where the digits classifier is cached.")


def config_for(layer: str, steps: int | None, params_override: str = ""):
  overrides = ",".join(filter(None, [
      f"norm_activation.type={layer}",
      f"trainer.train_steps={steps}" if steps else "", params_override]))
  return train_lib.load_config(EXPERIMENT, (), overrides)


def run(layers, workdir: str, steps: int | None, params_override: str = "",
        classifier_dir: str = digits_classifier.CACHE_DIR,
        progress: bool = True) -> list[dict]:
  """Trains each layer's GAN, evaluates and exports its EMA generator;
  returns one row of results per layer."""
  with cli.user_errors():
    cli.check_output_dir("--workdir", workdir)
    configs = {layer: config_for(layer, steps, params_override)
               for layer in layers}
  config = next(iter(configs.values()))
  resolution = config.generator.resolution
  with _quiet():  # trained and saved once, then cached
    classifier = evaluation.Classifier(digits_classifier.cached(
        config.data.source, resolution, classifier_dir))
  reals, labels = digits_classifier.real_images(config.data.source,
                                                resolution)
  real = digits_classifier.real_scores(classifier, reals, labels)
  rows = []
  for layer, config in configs.items():
    tf_keras.backend.clear_session()
    model_dir = os.path.join(workdir, layer)
    strategy = distribute_utils.get_distribution_strategy("one_device")
    trainer = trainer_lib.GANTrainer(config, strategy, model_dir)
    with cli.user_errors():  # a --workdir of an earlier, other run
      trainer.check_checkpoint()
    with _quiet(), train_lib.stop_on_divergence(config, model_dir):
      trainer.train(progress=progress)
    ev = config.evaluation
    results = evaluation.evaluate(
        trainer.ema_generator, classifier, reals, ev.num_samples,
        ev.batch_size, config.data.num_classes, ev.truncation or None,
        ev.standing_statistics_batches)
    grid = os.path.join(model_dir, "samples.png")
    evaluation.save_png(trainer.sample_grid(per_class=10), grid)
    export_dir = os.path.join(workdir, "export", layer)
    with _quiet():
      export.export_generator(trainer.ema_generator, export_dir)
    served = tf.saved_model.load(export_dir).signatures["serving_default"]
    z = evaluation.truncated_noise(np.random.default_rng(0), 10,
                                   config.generator.z_dim, None)
    reloaded = served(z=tf.constant(z), labels=tf.range(10),
                      truncation=tf.constant(1.0))["images"].numpy()
    rows.append(dict(
        layer=layer, fid=results["FID"], inception_score=results["IS"],
        class_agreement=results["class_agreement"],
        num_samples=results["num_samples"],
        real_inception_score=real["IS"],
        real_class_agreement=real["class_agreement"],
        steps=int(trainer.step.numpy()), samples=grid,
        saved_model=export_dir,
        reloaded_in_range=bool(np.all(np.abs(reloaded) <= 1.0))))
  return rows


@contextlib.contextmanager
def _quiet():
  """TensorFlow's Python logs (retracing warnings, SavedModel writing) off
  the console."""
  logger = tf.get_logger()
  level = logger.level
  logger.setLevel("ERROR")
  try:
    yield
  finally:
    logger.setLevel(level)


def save_comparison(rows, path: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.image as mpimg  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(rows), figsize=(3.4 * len(rows), 3.9))
  for ax, row in zip(np.atleast_1d(axes), rows):
    ax.imshow(mpimg.imread(row["samples"]))
    ax.set_title(f"{row['layer']}\nclass agreement "
                 f"{row['class_agreement']:.2f}, FID {row['fid']:.1f}, "
                 f"IS {row['inception_score']:.2f}", fontsize=8)
    ax.set_axis_off()
  fig.suptitle("BigGAN-deep on mnist5k: one row per class (EMA generator)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  layers = list(COMPARED) if _COMPARE.value else _LAYERS.value
  rows = run(layers, _WORKDIR.value, _STEPS.value, _OVERRIDE.value,
             _CLASSIFIER_DIR.value)
  print(f"\n{rows[0]['num_samples']} samples of the EMA generator "
        f"({rows[0]['num_samples'] // 10} per class) after "
        f"{rows[0]['steps']} generator steps, measured with the digits "
        "classifier:\n")
  print("| layer | class agreement | FID (lower is better) | IS | samples |")
  print("|---|---:|---:|---:|---|")
  for r in rows:
    print(f"| {r['layer']} | {r['class_agreement']:.3f} | {r['fid']:.2f} | "
          f"{r['inception_score']:.2f} | {r['samples']} |")
  print(f"\nReal validation digits: class agreement "
        f"{rows[0]['real_class_agreement']:.3f}, IS "
        f"{rows[0]['real_inception_score']:.2f}. Class agreement: the "
        "fraction of samples the classifier labels as the class they were "
        "drawn for.")
  if len(rows) > 1:
    path = os.path.join(_WORKDIR.value, "compare.png")
    save_comparison(rows, path)
    print(f"Comparison: {path}")
  print("SavedModels reloaded and run: "
        f"{', '.join(r['saved_model'] for r in rows)}")


if __name__ == "__main__":
  cli.run(main)
