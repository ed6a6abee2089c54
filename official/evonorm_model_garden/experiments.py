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

import difflib
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
from official.modeling.hyperparams import params_dict
import yaml

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
    params = hyperparams.override_params_dict(
        params, _read_config_file(path, params), is_strict=True)
  if params_override:
    params = hyperparams.override_params_dict(
        params, _parse_override(params_override, params), is_strict=True)
  params.validate()
  params.lock()
  check_layer_name(params)
  return params


def _read_config_file(path: str, params) -> dict:
  """A ``--config_file``'s overrides, checked against ``params``."""
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"--config_file={path!r} does not exist.")
  if tf.io.gfile.isdir(path):
    raise IsADirectoryError(f"--config_file={path!r} is a directory: name "
                            "a YAML file.")
  with tf.io.gfile.GFile(path) as f:
    try:
      values = yaml.load(f, Loader=params_dict._LOADER)  # pylint: disable=protected-access
    except yaml.YAMLError as error:
      mark = getattr(error, "problem_mark", None)
      where = f" at line {mark.line + 1}" if mark is not None else ""
      raise ValueError(f"--config_file={path!r} is not valid YAML{where}: "
                       f"{getattr(error, 'problem', None) or error}.") from None
  if values is None:
    return {}
  if not isinstance(values, dict):
    raise ValueError(f"--config_file={path!r} holds a YAML "
                     f"{type(values).__name__}, not a mapping of config "
                     "fields (e.g. `task:` then `model:` ...).")
  check_overrides(values, config_fields(params), f"--config_file={path}")
  return values


def _parse_override(text: str, params) -> dict:
  """``--params_override``'s ``a.b=1,c=x`` (or YAML/JSON) as a dict,
  checked against ``params``."""
  try:
    text = params_dict.nested_csv_str_to_json_str(text)
  except ValueError:
    pass  # YAML or JSON, as Model Garden accepts
  try:
    values = yaml.load(text, Loader=params_dict._LOADER)  # pylint: disable=protected-access
  except yaml.YAMLError:
    values = None
  if not isinstance(values, dict):
    raise ValueError(f"--params_override={text!r} is not a list of "
                     "field=value pairs (e.g. trainer.train_steps=100,"
                     "task.model.norm_activation.type=evonorm_s0).")
  check_overrides(values, config_fields(params), "--params_override")
  return values


def config_fields(config):
  """Every field of a Model Garden config as nested dicts, each choice of a
  one-of section included (``as_dict`` keeps only the chosen one)."""
  if isinstance(config, params_dict.ParamsDict):
    return {k: config_fields(v) for k, v in config.__dict__.items()
            if k not in config.RESERVED_ATTR}
  return config


def _flat_keys(config: dict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if isinstance(value, dict):
      keys += _flat_keys(value, f"{prefix}{key}.")
  return keys


def _type_error(value, default) -> str | None:
  """What is wrong with ``value`` for a field whose default is
  ``default`` (None when it fits)."""
  if default is None or value is None:
    return None
  if isinstance(default, bool):
    return None if isinstance(value, bool) else "true or false"
  if isinstance(default, int):
    return (None if isinstance(value, int) and not isinstance(value, bool)
            else "an integer")
  if isinstance(default, float):
    return (None if isinstance(value, (int, float)) and
            not isinstance(value, bool) else "a number")
  if isinstance(default, str):  # a name such as model_id='49' may be a number
    return (None if isinstance(value, (str, int, float)) and
            not isinstance(value, bool) else "a string")
  if isinstance(default, (list, tuple)):
    return None if isinstance(value, (list, tuple)) else "a list ([a, b])"
  return None


# Ranges of the fields a user sets most, by field name in any section of
# any experiment (classification, detection, GAN).
_AT_LEAST_ONE = frozenset({
    "train_steps", "steps_per_loop", "global_batch_size", "num_classes",
    "groups", "ch", "z_dim", "shared_dim", "resolution", "d_steps",
    "num_samples", "batch_size", "grid_classes", "max_to_keep"})
_PROBABILITY = frozenset({
    "dropout_rate", "norm_momentum", "label_smoothing", "drop_connect_rate",
    "stochastic_depth_drop_rate", "beta1", "beta2", "beta_1", "beta_2",
    "ema_decay", "average_decay"})
_ABOVE_ZERO = frozenset({
    "norm_epsilon", "epsilon", "width_multiplier", "initial_learning_rate",
    "g_learning_rate", "d_learning_rate"})
_SIZES = frozenset({"input_size"})


def _range_error(key: str, value) -> str | None:
  """What is wrong with the range of ``value`` for field ``key`` (None
  when it fits, or when the field has no known range)."""
  if isinstance(value, bool) or value is None:
    return None
  if key in _SIZES and isinstance(value, (list, tuple)):
    return (None if all(isinstance(v, int) and v >= 1 for v in value) else
            "a list of sizes of at least 1")
  if not isinstance(value, (int, float)):
    return None
  if key in _AT_LEAST_ONE and value < 1:
    return "at least 1"
  if key in _PROBABILITY and not 0 <= value <= 1:
    return "in [0, 1]"
  if key in _ABOVE_ZERO and not value > 0:
    return "above 0"
  return None


def check_overrides(values: dict, defaults: dict, source: str,
                    prefix: str = ""):
  """Raises unless every key of ``values`` is a field of ``defaults`` (an
  unknown key names the closest fields) holding a value of the field's
  type and, for the fields with a known range, within it."""
  for key, value in values.items():
    name = f"{prefix}{key}"
    if key not in defaults:
      known = _flat_keys(defaults, prefix)
      close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
      hint = (f"did you mean {', '.join(close)}?" if close else
              "its section's fields are: " + ", ".join(
                  sorted(defaults)[:12]) + ("..." if len(defaults) > 12
                                            else "") + ".")
      raise ValueError(f"{source}: {name} is not a field of this "
                       f"experiment's config; {hint}")
    default = defaults[key]
    if isinstance(default, dict) and default:
      if isinstance(value, dict):
        check_overrides(value, default, source, f"{name}.")
      elif value is not None:
        raise ValueError(f"{source}: {name} is a section of the config "
                         f"(fields {', '.join(sorted(default)[:6])}...); set "
                         f"one of its fields, e.g. {name}.{sorted(default)[0]}"
                         "=...")
      continue
    expected = _type_error(value, default) or _range_error(key, value)
    if expected:
      raise ValueError(f"{source}: {name}={value!r} should be {expected} "
                       f"(its default is {default!r}).")


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
  """The model's input channels, and the data of the splits ``mode`` reads,
  checked by the task class (``check_data(task_config, data_config,
  split)``)."""
  size = list(getattr(getattr(params.task, "model", None), "input_size",
                      None) or [])
  if len(size) == 3 and size[-1] != 3:
    raise ValueError(
        f"task.model.input_size={size}: Model Garden's input pipelines "
        "decode every image to 3 channels (a grayscale one repeated), so its "
        f"last size must be 3 (task.model.input_size=[{size[0]}, {size[1]}, "
        "3]).")
  task_cls = task_factory.get_task_cls(type(params.task))
  check = getattr(task_cls, "check_data", None)
  if check is None:
    return
  if "train" in mode:
    check(params.task, params.task.train_data, "train_data")
  if "eval" in mode:
    check(params.task, params.task.validation_data, "validation_data")


# Records read from the first file of a split to check what it holds (the
# whole data set is read only by training): enough to catch the wrong files
# or the wrong config, fast on any data set.
SAMPLED_RECORDS = 64


def sample_examples(data_config, split: str) -> tuple[str, list]:
  """The features of the first records of the split's first TFRecord file
  (None for a record that is not a ``tf.train.Example``), and the
  ``task.<split>.input_path: <file>`` that errors about them start with.
  Raises if the file holds no readable record."""
  patterns = data_config.input_path
  patterns = [patterns] if isinstance(patterns, str) else list(patterns)
  path = sorted(tf.io.gfile.glob(patterns[0]))[0]
  where = f"task.{split}.input_path: {path}"
  try:
    records = list(tf.data.TFRecordDataset(path).take(SAMPLED_RECORDS))
  except tf.errors.OpError:
    records = None
  if not records:
    raise ValueError(f"{where} is not a TFRecord file of examples (no "
                     "record can be read from it).")
  examples = []
  for record in records:
    try:
      examples.append(
          tf.train.Example.FromString(record.numpy()).features.feature)
    except Exception:  # pylint: disable=broad-except  (protobuf's DecodeError)
      examples.append(None)
  return where, examples


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
