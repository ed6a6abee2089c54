r"""Trains and evaluates an experiment with Model Garden's trainer.

Model Garden's flag conventions (``--experiment --mode --model_dir
--config_file --params_override --tpu``), this project's registrations, and
Model Garden's Orbit-based ``train_lib.run_experiment``. The distribution
strategy is ``runtime.distribution_strategy``: ``tpu`` (TPUStrategy; TF 2.20
has no TPUEstimator), ``mirrored``, ``multi_worker_mirrored`` or
``one_device``. Checkpoints and TensorBoard summaries go to ``--model_dir``;
a killed job started again with the same ``--model_dir`` resumes from its last
checkpoint. ``--searched_layers=DIR/best_layers.json`` registers the layers a
layer search found, so ``task.model.norm_activation.type`` can name them.

  python -m evonorm_vision.train --experiment=evonorm_resnet50_imagenet \
    --mode=train_and_eval --model_dir=gs://bucket/r50_b0 --tpu=my-tpu \
    --params_override=runtime.distribution_strategy=tpu,\
task.model.norm_activation.type=evonorm_b0,\
task.train_data.tfds_data_dir=gs://bucket/tfds,\
task.validation_data.tfds_data_dir=gs://bucket/tfds
"""

from absl import flags
from official.common import flags as tfm_flags
from official.core import train_lib
from official.core import train_utils
from official.modeling import performance

from evonorm_model_garden import checkpoints
from evonorm_model_garden import cli
from evonorm_model_garden import experiments
from evonorm_model_garden import run_training

FLAGS = flags.FLAGS


def main(_):
  with cli.user_errors():  # bad input: one line, before any work
    cli.check_output_dir("--model_dir", FLAGS.model_dir)
    params = experiments.parse(FLAGS)
    experiments.check_inputs(params, FLAGS.mode)
    checkpoints.check_start(params, FLAGS.model_dir, FLAGS.mode)
    strategy = experiments.make_strategy(params.runtime,
                                         experiments.task_batches(params))
    if params.runtime.mixed_precision_dtype:
      performance.set_mixed_precision_policy(
          params.runtime.mixed_precision_dtype)
    # Building the model checks what only a built model can tell (e.g. a
    # `groups` that does not fit a width, with the fallback off).
    task, trainer = experiments.make_task_and_trainer(params, strategy,
                                                      FLAGS.mode,
                                                      FLAGS.model_dir)
  if "train" in FLAGS.mode:
    train_utils.serialize_config(params, FLAGS.model_dir)
  with run_training.stop_on_divergence(params, FLAGS.model_dir):
    train_lib.run_experiment(
        distribution_strategy=strategy, task=task, mode=FLAGS.mode,
        params=params, model_dir=FLAGS.model_dir, trainer=trainer,
        train_actions=run_training.train_actions(params, trainer,
                                                 FLAGS.model_dir))


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  tfm_flags.define_flags()
  experiments.define_searched_layers_flag()
  flags.mark_flags_as_required(["experiment", "mode", "model_dir"])


if __name__ == "__main__":
  define_flags()
  cli.run(main)
