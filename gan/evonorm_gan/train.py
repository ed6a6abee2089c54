r"""Trains, evaluates and exports BigGAN-deep: ``python -m evonorm_gan.train``.

Model Garden-style flags: ``--experiment`` (``evonorm_biggan_deep_*``),
``--config_file`` (YAML, repeatable), ``--params_override``, ``--model_dir``,
``--mode``:

* ``train``: trains to ``trainer.train_steps`` generator steps, resuming from
  the latest checkpoint in ``--model_dir``;
* ``eval``: standing statistics for the EMA generator, IS and FID against
  the data (``evaluation.inception_path``), a sample grid PNG and
  ``eval.json`` in ``--model_dir``;
* ``train_and_eval``: both; ``--export_dir`` also writes the EMA generator as
  a SavedModel (``evonorm_gan.export``).

  python -m evonorm_gan.train --experiment=evonorm_biggan_deep_imagenet128 \
    --mode=train --model_dir=gs://BUCKET/biggan_b0 \
    --config_file=official/configs/experiments/biggan_deep_imagenet128_evonorm_b0_tpu.yaml \
    --params_override=runtime.tpu=TPU_NAME,data.tfds_data_dir=gs://BUCKET/tfds
"""

from __future__ import annotations

import json
import os

from absl import flags
import numpy as np
import tensorflow as tf
from official.modeling import performance

from evonorm_gan import configs  # noqa: F401  (registers the experiments)
from evonorm_gan import data as data_lib
from evonorm_gan import evaluation
from evonorm_gan import export
from evonorm_gan import models
from evonorm_gan import trainer as trainer_lib
from evonorm_model_garden import cli
from evonorm_model_garden import experiments

MODES = ("train", "eval", "train_and_eval")
EXPERIMENT_PREFIX = "evonorm_biggan"


def load_config(experiment: str, config_files=(), params_override: str = ""):
  """The experiment's config after YAML files and overrides, checked (the
  project's one loader, restricted to the GAN's experiments)."""
  config = experiments.load_params(experiment, config_files, params_override,
                                   prefix=EXPERIMENT_PREFIX)
  models.check_resolution(config.generator.resolution)
  return config


def stop_on_divergence(config, model_dir: str):
  """:func:`cli.stop_on_divergence` for a GAN experiment."""
  return cli.stop_on_divergence(
      f"norm_activation.type={config.norm_activation.type}", model_dir,
      "Try lower optimization.g_learning_rate and d_learning_rate, more "
      "discriminator steps (optimization.d_steps), or another layer.")


def make_strategy(config) -> tf.distribute.Strategy:
  return experiments.make_strategy(
      config.runtime, {"data.global_batch_size": config.data.global_batch_size})


def reference_images(config, num: int) -> np.ndarray:
  """``num`` real images (uint8) for FID: training images, or an offline
  dataset's validation split (1000 digits of mnist5k)."""
  if config.data.source in data_lib.OFFLINE_SOURCES:
    images, _ = data_lib.offline_images(config.data.source,
                                        config.generator.resolution,
                                        "validation")
    return evaluation.to_uint8(images[:num])
  batch = min(num, 250)
  iterator = iter(data_lib.dataset(config.data, config.generator.resolution,
                                   batch, seed=1234))
  images = []
  while sum(len(x) for x in images) < num:
    images.append(evaluation.to_uint8(next(iterator)[0].numpy()))
  return np.concatenate(images)[:num]


def evaluate(trainer, config, model_dir: str, classifier=None,
             real_images=None) -> dict:
  """Standing statistics, IS/FID of the EMA generator, a sample grid."""
  ev = config.evaluation
  classifier = classifier or evaluation.Classifier(ev.inception_path)
  if real_images is None:
    real_images = reference_images(config, ev.num_samples)
  results = evaluation.evaluate(
      trainer.ema_generator, classifier, real_images, ev.num_samples,
      ev.batch_size, config.data.num_classes, ev.truncation or None,
      ev.standing_statistics_batches)
  step = int(trainer.step.numpy())
  results["step"] = step
  evaluation.save_png(trainer.sample_grid(truncation=ev.truncation or None),
                      os.path.join(model_dir, f"samples_step{step}.png"))
  with tf.io.gfile.GFile(os.path.join(model_dir, "eval.json"), "w") as f:
    json.dump(results, f, indent=2)
  writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))
  with writer.as_default(step=step):
    for key in ("IS", "FID", "class_agreement"):
      if key in results:
        tf.summary.scalar(key, results[key])
  writer.flush()
  return results


def main(_):
  f = flags.FLAGS
  with cli.user_errors():  # bad input: one line, before any work
    cli.check_output_dir("--model_dir", f.model_dir)
    cli.check_export_dir("--export_dir", f.export_dir)
    config = load_config(f.experiment, f.config_file, f.params_override)
    data_lib.check_available(config.data)
    # Loaded first: a missing or unreadable network is one line, not a
    # traceback after training.
    classifier = (evaluation.Classifier(config.evaluation.inception_path)
                  if "eval" in f.mode else None)
    if config.runtime.mixed_precision_dtype:
      performance.set_mixed_precision_policy(
          config.runtime.mixed_precision_dtype)
    strategy = make_strategy(config)
    trainer = trainer_lib.GANTrainer(config, strategy, f.model_dir)
    # Resuming or evaluating: before params.yaml is rewritten.
    trainer.check_checkpoint(f.mode)
  tf.io.gfile.makedirs(f.model_dir)
  with tf.io.gfile.GFile(os.path.join(f.model_dir, "params.yaml"), "w") as fp:
    fp.write(json.dumps(config.as_dict(), indent=1))
  if "train" in f.mode:
    with stop_on_divergence(config, f.model_dir):
      logs = trainer.train(progress=f.progress)
    print("train:", json.dumps(logs))
  else:
    trainer.restore()
  if "eval" in f.mode:
    print("eval:", json.dumps(evaluate(trainer, config, f.model_dir,
                                       classifier=classifier)))
  if f.export_dir:
    print("export:", export.export_generator(trainer.ema_generator,
                                             f.export_dir))


def define_flags():
  flags.DEFINE_string("experiment", None, "A registered GAN experiment.")
  flags.DEFINE_multi_string("config_file", None, "YAML files, in order.")
  flags.DEFINE_string("params_override", "", "Overrides (a=b,c.d=e).")
  flags.DEFINE_string("model_dir", None, "Checkpoints and summaries.")
  flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")
  flags.DEFINE_string("export_dir", None, "Also export the EMA generator.")
  flags.DEFINE_bool("progress", True, "Show a progress bar.")
  flags.mark_flags_as_required(["experiment", "model_dir"])


if __name__ == "__main__":
  define_flags()
  cli.run(main)
