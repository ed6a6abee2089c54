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
  norm = getattr(params.task.model, "norm_activation", None)
  if norm is not None and hasattr(norm, "type"):
    evonorm_layers.registry.resolve_name(norm.type)  # lists valid names
  return params


def check_inputs(params, mode: str):
  """Data presence for the splits ``mode`` reads."""
  if "train" in mode:
    task_lib.check_data_available(params.task.train_data, "train_data")
  if "eval" in mode:
    task_lib.check_data_available(params.task.validation_data,
                                  "validation_data")


def make_strategy(params) -> tf.distribute.Strategy:
  """The configured strategy, with the batch sizes checked against it."""
  runtime = params.runtime
  strategy = distribute_utils.get_distribution_strategy(
      distribution_strategy=runtime.distribution_strategy,
      all_reduce_alg=runtime.all_reduce_alg,
      num_gpus=runtime.num_gpus,
      tpu_address=runtime.tpu)
  replicas = strategy.num_replicas_in_sync
  logging.info("Strategy %s with %d replicas.", type(strategy).__name__,
               replicas)
  task_lib.check_batch_divisible(params.task.train_data, replicas,
                                 "train_data")
  task_lib.check_batch_divisible(params.task.validation_data, replicas,
                                 "validation_data")
  return strategy
