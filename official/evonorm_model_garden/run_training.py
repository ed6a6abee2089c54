"""Runs an experiment with a progress bar and the logs kept in its model
directory: what the quickstarts show a user instead of hundreds of lines of
TensorFlow and trainer logs."""

from __future__ import annotations

import contextlib
import os
import sys

from absl import logging
import tensorflow as tf
from official.core import actions
from official.core import train_lib
from official.core import train_utils
from tqdm import tqdm

from evonorm_model_garden import checkpoints
from evonorm_model_garden import cli
from evonorm_model_garden import experiments


@contextlib.contextmanager
def logs_to(path: str | None):
  """Sends absl/TensorFlow logs and the trainer's prints to ``path``."""
  if path is None:
    yield
    return
  handler = logging.get_absl_handler().python_handler
  with open(path, "a") as log, contextlib.redirect_stdout(log):
    stream, handler.stream = handler.stream, log
    try:
      yield
    finally:
      handler.stream = stream


class _Progress:
  """A progress bar fed by Model Garden's train and eval actions."""

  def __init__(self, trainer, total: int, desc: str, disable: bool = False):
    self.trainer = trainer
    self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr,
                    dynamic_ncols=True, disable=disable)
    self.postfix = {}

  def train(self, output):
    self.bar.update(int(self.trainer.global_step.numpy()) - self.bar.n)
    if "training_loss" in output:
      self.postfix["loss"] = f"{float(output['training_loss']):.3f}"
    self.bar.set_postfix(self.postfix)

  def eval(self, output):
    if "accuracy" in output:
      self.postfix["val_acc"] = f"{float(output['accuracy']):.3f}"
      self.bar.set_postfix(self.postfix)


class RecoveryReport:
  """A train action that says on the terminal each time Model Garden's
  blow-up recovery (``trainer.recovery_max_trials`` > 0) restores the last
  checkpoint; its log line alone would go unseen in the quickstarts'
  ``train.log``. It evaluates Model Garden's own recovery condition on the
  same outputs, just before Model Garden's action does, so the two agree:
  past the last trial both raise, and :func:`stop_on_divergence` reports it."""

  def __init__(self, params, trainer, model_dir: str):
    self.model_dir = model_dir
    self.condition = actions.RecoveryCondition(
        global_step=trainer.global_step,
        loss_upper_bound=params.trainer.loss_upper_bound,
        recovery_begin_steps=params.trainer.recovery_begin_steps,
        recovery_max_trials=params.trainer.recovery_max_trials)

  def __call__(self, output):
    step = int(self.condition.global_step.numpy())
    if self.condition(output):
      latest = tf.train.latest_checkpoint(self.model_dir)
      tqdm.write(f"step {step}: training loss "
                 f"{float(output['training_loss']):.4g}; Model Garden's "
                 f"recovery restarts from {latest or 'the initial weights'} "
                 f"(trial {self.condition.recover_counter} of "
                 f"{self.condition.recovery_max_trials})",
                 file=sys.stderr)


def train_actions(params, trainer, model_dir: str) -> list:
  """The project's train actions for ``train_lib.run_experiment`` (Model
  Garden adds its own after them)."""
  if params.trainer.recovery_max_trials > 0:
    return [RecoveryReport(params, trainer, model_dir)]
  return []


def stop_on_divergence(params, model_dir: str):
  """:func:`cli.stop_on_divergence` for a Model Garden experiment."""
  norm = getattr(params.task.model, "norm_activation", None)
  setting = (f"task.model.norm_activation.type={norm.type}"
             if norm is not None else params.task.model.backbone.type)
  recovery = ("" if params.trainer.recovery_max_trials > 0 else
              cli.MODEL_GARDEN_RECOVERY_ADVICE)
  return cli.stop_on_divergence(setting, model_dir,
                                f"{cli.MODEL_GARDEN_ADVICE}{recovery}.")


def train_and_evaluate(params, model_dir: str, desc: str = "training",
                       verbose: bool = False, strategy=None,
                       progress: bool = True) -> dict:
  """Model Garden's train_and_eval with a progress bar; returns the final
  evaluation logs. ``strategy``: the distribution strategy to train under
  (default: the configured one)."""
  with cli.user_errors():
    experiments.check_inputs(params, "train_and_eval")
    checkpoints.check_start(params, model_dir, "train_and_eval")
    if strategy is None:
      strategy = experiments.make_strategy(
          params.runtime, experiments.task_batches(params))
    else:
      experiments.check_replicas(strategy, experiments.task_batches(params))
  tf.io.gfile.makedirs(model_dir)
  train_utils.serialize_config(params, model_dir)
  with logs_to(None if verbose else os.path.join(model_dir, "train.log")):
    with cli.user_errors():
      task, trainer = experiments.make_task_and_trainer(
          params, strategy, "train_and_eval", model_dir)
    progress = _Progress(trainer, params.trainer.train_steps, desc,
                         disable=not progress)
    try:
      with stop_on_divergence(params, model_dir):
        _, logs = train_lib.run_experiment(
            distribution_strategy=strategy, task=task,
            mode="train_and_eval", params=params, model_dir=model_dir,
            run_post_eval=True, trainer=trainer,
            train_actions=[progress.train,
                           *train_actions(params, trainer, model_dir)],
            eval_actions=[progress.eval])
    finally:
      progress.bar.close()
  return logs


