"""Does a checkpoint fit the model of a config? Checked before any work.

Model Garden restores what matches and leaves the rest as initialized: a
checkpoint trained with EvoNorm-B0, exported or resumed with
``norm_activation.type=evonorm_s0``, gives a model of random normalization
weights without a word, and a ``task.init_checkpoint`` of another layer ends
in a bare ``AssertionError`` deep inside the trainer. Here each is one error
naming the variables that differ.
"""

from __future__ import annotations

import tensorflow as tf
from official.core import task_factory

# What to do about a run's own checkpoint (resume, evaluation, export) that
# does not fit.
_RUN_ADVICE = ("Pass the experiment and --params_override the checkpoint "
               "was trained with (its model_dir holds them in params.yaml).")
_INIT_ADVICE = (
    "Initialize from a checkpoint trained with the same layer and widths, "
    "restore fewer parts (task.init_checkpoint_modules=backbone), or train "
    "from scratch (task.init_checkpoint='').")


def check_checkpoint(checkpoint_path: str, params=None,
                     flag: str | None = None) -> str:
  """Raises unless ``checkpoint_path`` is a readable checkpoint (a prefix, or
  a folder holding one) and, given the experiment's ``params``, holds the
  variables of the model they build: the same variables with the same
  shapes. Returns the checkpoint prefix."""
  flag = flag or f"--checkpoint_path={checkpoint_path!r}"
  prefix = _readable_prefix(checkpoint_path, flag)
  if params is not None:
    _check_fits(flag, prefix, params, "all", _RUN_ADVICE)
  return prefix


def check_start(params, model_dir: str, mode: str):
  """What a run will restore, checked before it starts: the last checkpoint
  of ``model_dir`` when it resumes or evaluates (``eval`` needs one); else,
  for training, the ``task.init_checkpoint`` parts
  (``init_checkpoint_modules``) that Model Garden's task restores into a new
  model."""
  if tf.io.gfile.isdir(model_dir) and tf.train.latest_checkpoint(model_dir):
    check_checkpoint(model_dir, params, flag=f"--model_dir={model_dir!r}")
    return
  if mode == "eval":  # Model Garden would score the initial weights
    raise FileNotFoundError(
        f"--mode=eval evaluates the latest checkpoint of --model_dir="
        f"{model_dir!r}, which holds none: train first, pass the training "
        "run's --model_dir, or use --mode=continuous_eval to wait for its "
        "checkpoints.")
  init = getattr(params.task, "init_checkpoint", None)
  if "train" in mode and init:
    flag = f"task.init_checkpoint={init!r}"
    prefix = _readable_prefix(init, flag)
    _check_fits(flag, prefix, params,
                params.task.init_checkpoint_modules or "all", _INIT_ADVICE)


def _readable_prefix(checkpoint_path: str, flag: str) -> str:
  prefix = checkpoint_path
  if tf.io.gfile.isdir(checkpoint_path):
    prefix = tf.train.latest_checkpoint(checkpoint_path)
    if prefix is None:
      raise FileNotFoundError(f"{flag} is a folder without a checkpoint: "
                              "pass the training run's --model_dir or a "
                              "checkpoint prefix (ckpt-N).")
  elif not (tf.io.gfile.exists(checkpoint_path) or
            tf.io.gfile.exists(checkpoint_path + ".index")):
    raise FileNotFoundError(
        f"{flag} does not exist: pass a checkpoint file prefix or the "
        "training run's --model_dir.")
  try:
    tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as error:
    raise ValueError(f"{flag} is not a readable TensorFlow checkpoint "
                     f"({error.__class__.__name__}: "
                     f"{str(error).splitlines()[0][:120]}): pass the prefix "
                     "of a checkpoint (ckpt-N, without .index) or the "
                     "training run's --model_dir.") from None
  return prefix


def _parts(model, modules) -> dict:
  """The checkpoint's top-level names and the model's parts restored from
  them, as Model Garden's tasks' ``initialize`` reads them."""
  if modules == "all":
    return {"model": model}
  wanted = [modules] if isinstance(modules, str) else list(modules)
  unknown = [m for m in wanted if m not in ("backbone", "decoder")]
  if unknown or ("decoder" in wanted and not hasattr(model, "decoder")):
    raise ValueError(
        f"task.init_checkpoint_modules={modules!r} names no part of this "
        "model: use 'all', 'backbone' or (detection) 'backbone,decoder'.")
  return {m: getattr(model, m) for m in wanted}


def _check_fits(flag: str, prefix: str, params, modules, advice: str):
  """Raises unless the checkpoint fits the ``modules`` of the model that
  ``params`` build."""
  model = task_factory.get_task(params.task).build_model()
  norm = getattr(params.task.model, "norm_activation", None)
  check_fits(_parts(model, modules), prefix, flag,
             f"layer {norm.type}" if norm is not None else None, advice)


def check_fits(parts: dict, prefix: str, flag: str, setting: str | None,
               advice: str = _RUN_ADVICE):
  """Raises a ValueError naming the first differences (and ``setting``, the
  layer the model was built with) unless the checkpoint ``prefix`` restores
  every variable of ``parts`` (its top-level names -> objects, as in
  ``tf.train.Checkpoint(**parts)``) and holds no other variable of their
  layers. Other top-level objects of the checkpoint (optimizers, steps) do
  not count."""
  differences = mismatches(parts, prefix)
  if differences:
    setting = f" ({setting})" if setting else ""
    raise ValueError(
        f"{flag} does not fit the model of this config{setting}: "
        f"{len(differences)} variable(s) differ, e.g. "
        f"{'; '.join(differences[:3])}. {advice}")


def mismatches(parts: dict, prefix: str) -> list[str]:
  """What differs between the checkpoint ``prefix`` and ``parts``, sorted:
  variables it lacks, else variables of their layers it has and they do
  not, or the first shape that differs."""
  try:
    status = tf.train.Checkpoint(**parts).read(prefix)
  except (ValueError, tf.errors.InvalidArgumentError) as error:  # shapes
    return [str(error).split("\n")[0][:300]]
  status.expect_partial()  # the optimizer's values are not read here
  # Internal API: TensorFlow's restore status has no public list of the
  # objects it matched (its assertion names an arbitrary few).
  restore = status._checkpoint  # pylint: disable=protected-access
  matched = {id(obj) for obj in restore.object_by_proto_id.values()}
  differences = [f"{v.name.split(':')[0]} is not in the checkpoint"
                 for part in parts.values() for v in part.variables
                 if id(v) not in matched]
  if differences:
    return sorted(differences)
  # Variables of the model's layers that the model does not have (a layer's
  # moving variance restored into a layer without one).
  nodes = restore.object_graph_proto.nodes
  for node_id, obj in restore.object_by_proto_id.items():
    # The root's children are the step and save counter; a layer not built
    # yet (Mask R-CNN's heads) restores its variables when it creates them,
    # at its first call.
    if node_id == 0 or getattr(obj, "built", True) is False:
      continue
    for child in nodes[node_id].children:
      if (child.node_id not in restore.object_by_proto_id and
          nodes[child.node_id].attributes):
        owner = getattr(obj, "name", type(obj).__name__)
        differences.append(f"{owner}/{child.local_name} is only in the "
                           "checkpoint")
  return sorted(differences)
