r"""MAdds, parameters and training-step time of Mask R-CNN with each layer.

For ResNet-50-FPN and SpineNet-96 at 1024x1024 (Table 5's models) with each
of Table 5's layers, counts

* multiply-adds of one inference pass, batch 1, with Model Garden's helper
  (``official.core.train_utils.try_count_flops``, TensorFlow's profiler,
  which counts a multiply-add as 2 float operations: MAdds = FLOPs / 2),
  also split into convolutions and dense layers vs everything else;
* trainable parameters (``model.trainable_variables``; Model Garden's
  ``try_count_params`` also counts moving statistics), as the paper does;

and prints them beside the paper's Table 5 columns. With ``--step_time`` it
also times training steps of a Mask R-CNN (small images, the generated
shapes data) with each layer, in interleaved rounds, as medians and ratios
to ``bn_relu`` in the same run.

  python bench/detection_cost.py                     # MAdds and parameters
  python bench/detection_cost.py --step_time --models=r50_fpn \
      --step_image_size=256
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras
from official.core import exp_factory
from official.core import task_factory
from official.core import train_utils
from official.modeling import hyperparams
from tqdm import tqdm

from evonorm_detection import registry_imports  # noqa: F401
from evonorm_detection.data import shapes
import bench_flags  # bench/
import timing  # bench/
# pylint: enable=g-import-not-at-top,wrong-import-position

BASELINE = "bn_relu"
LAYERS = ["bn_relu", "bn_silu", "gn_relu", "evonorm_b0", "evonorm_s0"]
MODELS = {
    "r50_fpn": ("evonorm_maskrcnn_r50fpn_coco", ""),
    "spinenet96": ("evonorm_maskrcnn_spinenet96_coco", ""),
    # The detection quickstart's narrow ResNet-18-FPN (fast to count).
    "shapes_quickstart": ("evonorm_maskrcnn_shapes_quickstart", ""),
}
# Paper, Table 5: (MAdds in billions, parameters in millions).
PAPER = {
    ("r50_fpn", "bn_relu"): (379.7, 46.37),
    ("r50_fpn", "bn_silu"): (379.9, 46.38),
    ("r50_fpn", "evonorm_b0"): (380.4, 46.38),
    ("r50_fpn", "gn_relu"): (380.8, 46.37),
    ("r50_fpn", "evonorm_s0"): (380.4, 46.38),
    ("spinenet96", "bn_relu"): (315.0, 55.19),
    ("spinenet96", "bn_silu"): (315.2, 55.21),
    ("spinenet96", "evonorm_b0"): (315.8, 55.21),
    ("spinenet96", "gn_relu"): (316.5, 55.19),
    ("spinenet96", "evonorm_s0"): (315.8, 55.21),
}
_MATMUL_OPS = ("Conv2D", "Conv2DBackpropInput", "DepthwiseConv2dNative",
               "MatMul", "BatchMatMul", "BatchMatMulV2", "Einsum")

_MODELS = flags.DEFINE_list("models", ["r50_fpn", "spinenet96"],
                            f"Among {sorted(MODELS)}.")
_LAYERS = flags.DEFINE_list("layers", LAYERS, "Registered layer names.")
_SIZE = flags.DEFINE_integer("image_size", 1024, "Input size for MAdds.")
_STEP_TIME = flags.DEFINE_bool("step_time", False, "Also time training "
                               "steps on the generated shapes data.")
_STEP_SIZE = flags.DEFINE_integer("step_image_size", 256,
                                  "Image size of the timed steps.")
_STEP_BATCH = flags.DEFINE_integer("step_batch_size", 2, "Timed batch.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds.")
_STEPS = flags.DEFINE_integer("steps_per_round", 3, "Timed steps per round.")
_JSON = flags.DEFINE_string("json_output", None, "Also write results here.")


def _params(model_name, layer, size):
  name, extra = MODELS[model_name]
  overrides = ",".join(filter(None, [
      extra, f"task.model.norm_activation.type={layer}",
      f"task.model.input_size=[{size},{size},3]",
      "task.model.norm_activation.use_sync_bn=false"]))
  return hyperparams.override_params_dict(exp_factory.get_exp_config(name),
                                          overrides, is_strict=True)


def _profile(concrete, regexes=None) -> int:
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top
  frozen, _ = convert_to_constants.convert_variables_to_constants_v2_as_graph(
      concrete)
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  if regexes:
    options["account_type_regexes"] = list(regexes)
  return tf.compat.v1.profiler.profile(
      graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(),
      options=options).total_float_ops


def count(model_name, layer, size) -> dict:
  """MAdds (total and of convolutions/dense layers) and parameters."""
  params = _params(model_name, layer, size)
  tf_keras.backend.clear_session()
  model = task_factory.get_task(params.task).build_model()
  inputs = {"images": tf.TensorSpec([1, size, size, 3], tf.float32),
            "image_shape": tf.TensorSpec([1, 2], tf.float32)}
  flops = train_utils.try_count_flops(model, inputs)
  if flops is None:
    raise RuntimeError(f"try_count_flops failed for {model_name}/{layer}; "
                       "run with --verbosity=1 to see why.")
  concrete = tf.function(model.call).get_concrete_function(**inputs)
  matmul = _profile(concrete, [f"^{op}$" for op in _MATMUL_OPS])
  trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  return dict(model=model_name, layer=layer, madds_b=flops / 2e9,
              matmul_madds_b=matmul / 2e9, params_m=trainable / 1e6,
              all_weights_m=train_utils.try_count_params(model) / 1e6)


def _step(model_name, layer, data_dir, size, batch):
  params = _params(model_name, layer, size)
  data = (f"task.train_data.input_path={shapes.file_pattern(data_dir, 'train')},"
          f"task.train_data.global_batch_size={batch},"
          "task.train_data.dtype=float32,"
          "runtime.mixed_precision_dtype=float32")
  params = hyperparams.override_params_dict(params, data, is_strict=True)
  params.task.model.input_size = [size, size, 3]
  task = task_factory.get_task(params.task)
  model = task.build_model()
  optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)
  iterator = iter(task.build_inputs(params.task.train_data))
  batch_data = next(iterator)

  @tf.function
  def step(inputs):
    return task.train_step(inputs, model, optimizer)["loss"]

  return lambda: float(step(batch_data))


def time_steps(model_name, names, data_dir, size, batch) -> list[dict]:
  steps = timing.build_and_warm_up(
      names, lambda name: _step(model_name, name, data_dir, size, batch),
      desc=f"{model_name}: build + warm up")
  times = timing.interleaved(
      {name: timing.timed(name, step) for name, step in steps.items()},
      _ROUNDS.value, _STEPS.value, desc=f"{model_name}: timing rounds")
  return [dict(model=model_name, layer=name, step_ms=1e3 * median,
               ratio=ratio)
          for name, (median, ratio) in timing.medians_and_ratios(
              times, BASELINE).items()]


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  with bench_flags.checked(("layers",)):
    unknown = sorted(set(_MODELS.value) - set(MODELS))
    if unknown:
      raise app.UsageError(f"Unknown --models {unknown}; choose among "
                           f"{sorted(MODELS)}.")
  names = [BASELINE] + [n for n in _LAYERS.value if n != BASELINE]
  rows = []
  for model_name in _MODELS.value:
    for layer in tqdm(names, desc=f"{model_name}: counting", file=sys.stderr):
      rows.append(count(model_name, layer, _SIZE.value))
  print(f"\nInference at {_SIZE.value}x{_SIZE.value}, batch 1; MAdds = TF "
        "profiler float operations / 2 (Model Garden's try_count_flops); "
        "parameters are trainable ones.\n")
  print("| model | layer | MAdds (B) | of which conv/dense (B) | params (M) "
        "| paper MAdds (B) | paper params (M) | MAdds vs paper |")
  print("|---|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    paper = PAPER.get((r["model"], r["layer"]))
    r.update(paper_madds_b=paper[0] if paper else None,
             paper_params_m=paper[1] if paper else None)
    versus = f"{r['madds_b'] / paper[0] - 1:+.1%}" if paper and (
        _SIZE.value == 1024) else "-"
    print(f"| {r['model']} | {r['layer']} | {r['madds_b']:.1f} | "
          f"{r['matmul_madds_b']:.1f} | {r['params_m']:.2f} | "
          f"{paper[0] if paper else '-'} | {paper[1] if paper else '-'} | "
          f"{versus} |")
  timed = []
  if _STEP_TIME.value:
    timed = _time_all(names)
  timing.write_json(_JSON.value, dict(image_size=_SIZE.value, cost=rows,
                                      step_time=timed))


def _time_all(names) -> list[dict]:
  with tempfile.TemporaryDirectory() as data_dir:
    shapes.write_shapes_dataset(data_dir, {"train": 8})
    timed = []
    for model_name in _MODELS.value:
      timed += time_steps(model_name, names, data_dir, _STEP_SIZE.value,
                          _STEP_BATCH.value)
  print(f"\nTraining step, batch {_STEP_BATCH.value} at "
        f"{_STEP_SIZE.value}x{_STEP_SIZE.value}, CPU graph mode; median of "
        f"{_ROUNDS.value * _STEPS.value} steps, ratio to {BASELINE} in this "
        "run.\n")
  print("| model | layer | step (ms) | time vs bn_relu |")
  print("|---|---|---:|---:|")
  for r in timed:
    print(f"| {r['model']} | {r['layer']} | {r['step_ms']:.0f} | "
          f"{r['ratio']:.2f}x |")
  return timed


if __name__ == "__main__":
  bench_flags.run(main)
