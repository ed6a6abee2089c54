"""Parsing and checking an experiment before any model is built.

Shared by the training, export and quickstart entry points: an unknown
experiment or layer name, a missing dataset or a batch that does not split
over the replicas is reported before training starts. Layers found by the
layer search (a ``best_layers.json``) are registered first, with
``--searched_layers``, so a config can name them.
"""

from __future__ import annotations

from absl import flags
from absl import logging
import tensorflow as tf
from official.common import distribute_utils
from official.core import exp_factory
from official.core import task_factory
from official.core import train_utils

import evonorm_layers
from evonorm_layers.search import load_searched_layers
from evonorm_vision import registry_imports  # noqa: F401  pylint: disable=unused-import
from evonorm_vision.tasks import image_classification as task_lib

PROJECT_EXPERIMENT_PREFIX = "evonorm_"


def project_experiments() -> list[str]:
  return sorted(n for n in exp_factory._REGISTERED_CONFIGS  # pylint: disable=protected-access
                if n.startswith(PROJECT_EXPERIMENT_PREFIX))


def check_experiment_name(name: str):
  if name not in exp_factory._REGISTERED_CONFIGS:  # pylint: disable=protected-access
    raise ValueError(
        f"Unknown experiment {name!r}. This project's experiments: "
        f"{', '.join(project_experiments())} (Model Garden's own are also "
        "accepted).")


def define_searched_layers_flag():
  flags.DEFINE_multi_string(
      "searched_layers", [], "best_layers.json files written by the layer "
      "search (python -m evonorm_layers.search); their layers can then be "
      "named in task.model.norm_activation.type.")


def register_searched_layers(paths) -> list[str]:
  """Registers the layers of each search report; returns their names."""
  names = []
  for path in paths or ():
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(
          f"--searched_layers={path!r} does not exist. Pass the "
          "best_layers.json that a layer search wrote to its --output_dir.")
    names += load_searched_layers(path)
  if names:
    logging.info("Registered searched layers: %s", ", ".join(names))
  return names


def parse(flags_obj):
  """``train_utils.parse_configuration`` with clear errors for bad names."""
  check_experiment_name(flags_obj.experiment)
  register_searched_layers(getattr(flags_obj, "searched_layers", ()))
  params = train_utils.parse_configuration(flags_obj, print_return=False)
  check_layer_name(params)
  return params


def check_layer_name(params):
  """Raises, listing the valid names, if the configured layer is unknown."""
  norm = getattr(params.task.model, "norm_activation", None)
  if norm is not None and hasattr(norm, "type"):
    evonorm_layers.registry.resolve_name(norm.type)


def check_inputs(params, mode: str):
  """Data presence for the splits ``mode`` reads, checked by the task class
  (``check_data(task_config, data_config, split)``)."""
  task_cls = task_factory.get_task_cls(type(params.task))
  check = getattr(task_cls, "check_data", None)
  if check is None:
    return
  if "train" in mode:
    check(params.task, params.task.train_data, "train_data")
  if "eval" in mode:
    check(params.task, params.task.validation_data, "validation_data")


def make_strategy(params) -> tf.distribute.Strategy:
  """The configured strategy, with the batch sizes checked against it."""
  runtime = params.runtime
  strategy = distribute_utils.get_distribution_strategy(
      distribution_strategy=runtime.distribution_strategy,
      all_reduce_alg=runtime.all_reduce_alg,
      num_gpus=runtime.num_gpus,
      tpu_address=runtime.tpu)
  check_replicas(params, strategy)
  return strategy


def check_replicas(params, strategy: tf.distribute.Strategy):
  """The batch sizes split evenly over the strategy's replicas."""
  replicas = strategy.num_replicas_in_sync
  logging.info("Strategy %s with %d replicas.", type(strategy).__name__,
               replicas)
  task_lib.check_batch_divisible(params.task.train_data, replicas,
                                 "train_data")
  task_lib.check_batch_divisible(params.task.validation_data, replicas,
                                 "validation_data")


def make_task_and_trainer(params, strategy: tf.distribute.Strategy, mode: str,
                          model_dir: str):
  """The task and Model Garden's trainer (model and optimizer built), as
  ``train_lib.run_experiment`` would create them."""
  with strategy.scope():
    task = task_factory.get_task(params.task, logging_dir=model_dir)
    trainer = train_utils.create_trainer(
        params, task, train="train" in mode,
        evaluate="eval" in mode,
        checkpoint_exporter=train_utils.maybe_create_best_ckpt_exporter(
            params, model_dir))
  return task, trainer
