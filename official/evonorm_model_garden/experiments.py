"""Loading and checking an experiment before any model is built.

The one loader of every entry point (training, export, the quickstarts, the
GAN): the experiment's name, its YAML files and ``--params_override`` in
Model Garden's order, layers found by the layer search (a
``best_layers.json``, ``--searched_layers``) registered first so that a
config can name them, and the checks that fail fast with one line: an
unknown experiment or layer, a missing dataset, a batch that does not split
over the replicas.

Which experiments exist: the packages that register Model Garden
experiments declare a module under the ``evonorm.experiments`` entry-point
group (``pyproject.toml``); :func:`import_registrations` imports them, so an
entry point knows every installed task package without importing one.
"""

from __future__ import annotations

import functools
from importlib import metadata
import importlib

from absl import flags
from absl import logging
import tensorflow as tf
from official.common import distribute_utils
from official.core import exp_factory
from official.core import task_factory
from official.core import train_utils
from official.modeling import hyperparams

import evonorm_layers

PROJECT_EXPERIMENT_PREFIX = "evonorm_"
ENTRY_POINT_GROUP = "evonorm.experiments"


@functools.cache
def import_registrations() -> tuple[str, ...]:
  """Imports every module of the ``evonorm.experiments`` entry points (and
  Model Garden's vision registrations); returns their names."""
  importlib.import_module("official.vision.registry_imports")
  names = tuple(sorted(e.value for e in metadata.entry_points(
      group=ENTRY_POINT_GROUP)))
  for name in names:
    importlib.import_module(name)
  return names


def project_experiments(prefix: str = PROJECT_EXPERIMENT_PREFIX) -> list[str]:
  return sorted(n for n in exp_factory._REGISTERED_CONFIGS  # pylint: disable=protected-access
                if n.startswith(prefix))


def check_experiment_name(name: str,
                          prefix: str = PROJECT_EXPERIMENT_PREFIX):
  """Raises, listing this project's experiments of ``prefix``, unless
  ``name`` is registered (and starts with ``prefix`` when that is not the
  project's own prefix)."""
  import_registrations()
  known = name in exp_factory._REGISTERED_CONFIGS  # pylint: disable=protected-access
  if not known or (prefix != PROJECT_EXPERIMENT_PREFIX and
                   not name.startswith(prefix)):
    own = ("" if prefix != PROJECT_EXPERIMENT_PREFIX else
           " (Model Garden's own are also accepted)")
    raise ValueError(
        f"Unknown experiment {name!r}. This project's experiments: "
        f"{', '.join(project_experiments(prefix))}{own}.")


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
    # Only the layer compiler: not the search's evolution, Ray or reports.
    from evonorm_layers.search import layer as searched  # pylint: disable=g-import-not-at-top
    names += searched.load_searched_layers(path)
  if names:
    logging.info("Registered searched layers: %s", ", ".join(names))
  return names


def load_params(name: str, config_files=(), params_override: str = "",
                searched_layers=(), *,
                prefix: str = PROJECT_EXPERIMENT_PREFIX):
  """The experiment's config after YAML files and overrides, checked and
  locked (Model Garden's order: the registered config, each file, then the
  overrides)."""
  check_experiment_name(name, prefix)
  register_searched_layers(searched_layers)
  params = exp_factory.get_exp_config(name)
  for path in config_files or ():
    params = hyperparams.override_params_dict(params, path, is_strict=True)
  if params_override:
    params = hyperparams.override_params_dict(params, params_override,
                                              is_strict=True)
  params.validate()
  params.lock()
  check_layer_name(params)
  return params


def parse(flags_obj):
  """:func:`load_params` from Model Garden's flags (``--experiment
  --config_file --params_override``, and ``--searched_layers``)."""
  return load_params(flags_obj.experiment, flags_obj.config_file,
                     flags_obj.params_override,
                     getattr(flags_obj, "searched_layers", ()))


def check_layer_name(params):
  """Raises, listing the valid names, if the configured layer is unknown."""
  model = getattr(getattr(params, "task", params), "model", params)
  norm = getattr(model, "norm_activation", None)
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


def check_batch_divisible(batch: int, num_replicas: int, field: str):
  """Raises if the global batch ``field`` does not split evenly over the
  replicas."""
  if batch <= 0 or batch % num_replicas:
    raise ValueError(
        f"{field}={batch} is not divisible by the {num_replicas} replicas "
        f"of the distribution strategy. Use a multiple of {num_replicas} "
        f"(e.g. {max(num_replicas, batch - batch % num_replicas)}), and "
        "scale the learning rate with it.")


def make_strategy(runtime, batches: dict[str, int]) -> tf.distribute.Strategy:
  """The strategy of a ``runtime`` config section, with each global batch
  size of ``batches`` (config field -> size) checked against its replicas."""
  strategy = distribute_utils.get_distribution_strategy(
      distribution_strategy=runtime.distribution_strategy,
      all_reduce_alg=runtime.all_reduce_alg,
      num_gpus=runtime.num_gpus,
      tpu_address=runtime.tpu)
  check_replicas(strategy, batches)
  return strategy


def check_replicas(strategy: tf.distribute.Strategy, batches: dict[str, int]):
  replicas = strategy.num_replicas_in_sync
  logging.info("Strategy %s with %d replicas.", type(strategy).__name__,
               replicas)
  for field, batch in batches.items():
    check_batch_divisible(batch, replicas, field)


def task_batches(params) -> dict[str, int]:
  """The global batch sizes of a Model Garden task's training and
  validation data."""
  return {f"task.{split}.global_batch_size":
              getattr(params.task, split).global_batch_size
          for split in ("train_data", "validation_data")}


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
