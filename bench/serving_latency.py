r"""Serving latency of exported classifiers with each norm-activation layer.

For every backbone (``--models``) and layer (``--layers``) this exports a
classifier with Model Garden's export library (``image_tensor`` input, any
batch size; weights as initialized: latency does not depend on their
values), then times it in a fresh process that imports only TensorFlow:
``tf.saved_model.load`` and the ``serving_default`` signature, at every
``--batch_sizes`` at ``--image_size``. With ``--tflite`` each export is also
converted to a float32 TFLite model and timed at batch 1 in the TFLite
interpreter (its default XNNPack delegate, one thread per core).

Layers take turns within each round (interleaved, so that a drift of the
machine reaches every layer alike); figures are medians, and ratios are to
``bn_relu`` on the same backbone and batch in the same run.

  python bench/serving_latency.py                   # 4 backbones, every layer
  python bench/serving_latency.py --models=resnet_v2_50 \
      --layers=bn_relu,evonorm_b0,evonorm_s0 --batch_sizes=1,16
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import numpy as np
from tqdm import tqdm

import bench_flags  # bench/
import timing  # bench/
# pylint: enable=g-import-not-at-top,wrong-import-position

BASELINE = "bn_relu"
# backbone -> (experiment, overrides): the paper's classification networks.
MODELS = {
    "resnet_v1_50": ("evonorm_resnet50_imagenet",
                     "task.model.backbone.type=evonorm_resnet,"
                     "task.model.backbone.evonorm_resnet.model_id=50"),
    "resnet_v2_50": ("evonorm_resnet50_imagenet", ""),
    "efficientnet_b0": ("evonorm_efficientnet_b0_imagenet", ""),
    "mobilenet_v2": ("evonorm_mobilenetv2_imagenet", ""),
}
LAYERS = ["bn_relu", "evonorm_b0", "evonorm_b1", "evonorm_b2", "evonorm_s0",
          "evonorm_s1", "evonorm_s2", "bn_silu", "gn_relu", "gn_silu",
          "ln_relu", "frn_tlu"]

_MODELS = flags.DEFINE_list("models", list(MODELS), f"Among {list(MODELS)}.")
_LAYERS = flags.DEFINE_list("layers", LAYERS, "Registered layer names.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes timed.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Image height and width.",
                             lower_bound=8)
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds.",
                               lower_bound=1)
_STEPS = flags.DEFINE_integer("steps_per_round", 3, "Timed calls per round.",
                              lower_bound=1)
_TFLITE = flags.DEFINE_bool("tflite", True, "Also time float32 TFLite at "
                            "batch 1 (XNNPack).")
_OP_PROFILE = flags.DEFINE_bool(
    "op_profile", False, "Also trace one SavedModel call per export at the "
    "first --batch_sizes and print the time of each op type: where an "
    "EvoNorm's serving time goes.")
_WORK_DIR = flags.DEFINE_string("work_dir", None, "Keep the exports here "
                                "(default: a temporary directory).")
_JSON = flags.DEFINE_string("json_output", None, "Also write results here.")
_TIME_DIR = flags.DEFINE_string("time_dir", None, "(internal) Time the "
                                "exports in this directory.")


def _name(model: str, layer: str) -> str:
  return f"{model}__{layer}"


def export_all(work_dir: str) -> list[tuple[str, str]]:
  """Exports every (model, layer) to ``work_dir`` (kept when already
  there); returns the pairs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from official.core import task_factory  # pylint: disable=g-import-not-at-top
  from evonorm_model_garden import experiments  # pylint: disable=g-import-not-at-top
  from evonorm_model_garden import export  # pylint: disable=g-import-not-at-top
  experiments.import_registrations()
  pairs = [(m, l) for m in _MODELS.value for l in _LAYERS.value]
  size = _SIZE.value
  for model, layer in tqdm(pairs, desc="export", file=sys.stderr):
    export_dir = os.path.join(work_dir, _name(model, layer))
    if os.path.exists(os.path.join(export_dir, "saved_model.pb")):
      continue
    experiment, overrides = MODELS[model]
    params = experiments.load_params(experiment, (), ",".join(filter(None, [
        overrides, f"task.model.norm_activation.type={layer}",
        f"task.model.input_size=[{size},{size},3]",
        "task.model.norm_activation.use_sync_bn=false"])))
    tf_keras.backend.clear_session()
    classifier = task_factory.get_task(params.task).build_model()
    checkpoint = tf.train.Checkpoint(model=classifier).save(
        os.path.join(work_dir, "checkpoints", _name(model, layer), "ckpt"))
    export.export(params, checkpoint, export_dir + ".tmp")
    if _TFLITE.value:
      export.write_tflite(export_dir + ".tmp",
                          os.path.join(export_dir + ".tmp", "model.tflite"),
                          batch_size=1, image_size=(size, size))
    os.replace(export_dir + ".tmp", export_dir)
  return pairs


def time_all(work_dir: str, names: list[str]) -> dict:
  """Runs in a fresh process: seconds of every timed call, per export and
  setting (``"batch N"``, ``"tflite batch 1"``)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # tf.lite.Interpreter's notice of its move to ai_edge_litert (the same
  # runtime, not installed here).
  warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is "
                          "deprecated")
  size = _SIZE.value
  rng = np.random.default_rng(0)
  runs = {}
  for name in tqdm(names, desc="load + warm up", file=sys.stderr):
    export_dir = os.path.join(work_dir, name)
    served = tf.saved_model.load(export_dir).signatures["serving_default"]
    (input_name,) = served.structured_input_signature[1]
    for batch in map(int, _BATCHES.value):
      images = tf.constant(rng.integers(0, 256, (batch, size, size, 3),
                                        dtype=np.uint8))
      call = (lambda served=served, images=images, input_name=input_name:
              served(**{input_name: images})["logits"].numpy())
      call()
      runs[(name, f"batch {batch}")] = timing.timed(name, call)
    tflite = os.path.join(export_dir, "model.tflite")
    if _TFLITE.value and os.path.exists(tflite):
      interpreter = tf.lite.Interpreter(model_path=tflite,
                                        num_threads=os.cpu_count())
      interpreter.allocate_tensors()
      (source,) = interpreter.get_input_details()
      interpreter.set_tensor(source["index"], rng.integers(
          0, 256, (1, size, size, 3), dtype=np.uint8))
      output = interpreter.get_output_details()[0]["index"]

      def invoke(interpreter=interpreter, output=output):
        interpreter.invoke()
        return interpreter.get_tensor(output)

      invoke()
      runs[(name, "tflite batch 1")] = timing.timed(name, invoke)
  times = timing.interleaved(runs, _ROUNDS.value, _STEPS.value)
  return {f"{name}|{setting}": seconds
          for (name, setting), seconds in times.items()}


def op_profile(work_dir: str, names: list[str]) -> dict:
  """Runs in the fresh process: milliseconds per op type of one traced
  ``serving_default`` call of each export (median of 3 traces), at the
  first batch size: ``{name: {op type: ms}}``, costliest first."""
  import collections  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  batch, size = int(_BATCHES.value[0]), _SIZE.value
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3),
                                             dtype=np.uint8)
  profiles = {}
  for name in tqdm(names, desc="op profile", file=sys.stderr):
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
      signature = tf.compat.v1.saved_model.loader.load(
          session, ["serve"], os.path.join(work_dir, name)
      ).signature_def["serving_default"]
      (source,) = signature.inputs.values()
      fetch = signature.outputs["logits"].name
      session.run(fetch, {source.name: images})
      traces = []
      for _ in range(3):
        metadata = tf.compat.v1.RunMetadata()
        session.run(fetch, {source.name: images},
                    options=tf.compat.v1.RunOptions(
                        trace_level=tf.compat.v1.RunOptions.FULL_TRACE),
                    run_metadata=metadata)
        per_op = collections.Counter()
        for device in metadata.step_stats.dev_stats:
          for node in device.node_stats:
            label = node.timeline_label
            op = (label.split(" = ", 1)[1].split("(", 1)[0]
                  if " = " in label else node.node_name)
            per_op[op] += node.all_end_rel_micros / 1e3
        traces.append(per_op)
    ops = set().union(*traces)
    medians = {op: statistics.median(t[op] for t in traces) for op in ops}
    profiles[name] = dict(sorted(medians.items(), key=lambda kv: -kv[1]))
  return profiles


def print_op_profile(profiles: dict, top: int = 8):
  print(f"\nOp types by time in one traced SavedModel call (batch "
        f"{_BATCHES.value[0]}; the sum of each op's time, in ms, so ops run "
        "in parallel count in full):\n")
  for name, ops in profiles.items():
    print(f"* {name.replace('__', ' ')}: " + ", ".join(
        f"{op} {ms:.1f}" for op, ms in list(ops.items())[:top]))


def rows_from(times: dict) -> list[dict]:
  """Medians and ratios to the baseline on the same model and setting."""
  rows = []
  for key, seconds in times.items():
    name, setting = key.split("|")
    model, layer = name.split("__")
    base = times.get(f"{_name(model, BASELINE)}|{setting}")
    median = statistics.median(seconds)
    rows.append(dict(
        model=model, layer=layer, setting=setting, median_ms=1e3 * median,
        spread_ms=[1e3 * min(seconds), 1e3 * max(seconds)],
        ratio=median / statistics.median(base) if base else None))
  order = {l: i for i, l in enumerate(_LAYERS.value)}
  return sorted(rows, key=lambda r: (r["model"], r["setting"],
                                     order.get(r["layer"], 99)))


def main(argv):
  del argv
  with bench_flags.checked(("layers",)):
    unknown = sorted(set(_MODELS.value) - set(MODELS))
    if unknown:
      raise app.UsageError(f"Unknown --models {unknown}; choose among "
                           f"{list(MODELS)}.")
  if _TIME_DIR.value:  # the fresh process
    names = [_name(m, l) for m in _MODELS.value for l in _LAYERS.value]
    results = {"times": time_all(_TIME_DIR.value, names)}
    if _OP_PROFILE.value:
      results["op_profile"] = op_profile(_TIME_DIR.value, names)
    timing.write_json(_JSON.value, results)
    return
  if BASELINE not in _LAYERS.value:
    _LAYERS.value.insert(0, BASELINE)
  work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix="serving_latency_")
  export_all(work_dir)
  times_file = os.path.join(work_dir, "times.json")
  flags_out = [f"--time_dir={work_dir}", f"--json_output={times_file}"] + [
      f"--{f}={flags.FLAGS[f].serialize().split('=', 1)[1]}"
      for f in ("models", "layers", "batch_sizes", "image_size", "rounds",
                "steps_per_round")] + [
                    "--tflite" if _TFLITE.value else "--notflite",
                    "--op_profile" if _OP_PROFILE.value else "--noop_profile"]
  subprocess.run([sys.executable, os.path.abspath(__file__), *flags_out],
                 check=True)
  with open(times_file) as f:
    results = json.load(f)
  rows = rows_from(results["times"])
  print(f"\nServing latency at {_SIZE.value}x{_SIZE.value}: SavedModels "
        "reloaded in a fresh process (serving_default, image_tensor), "
        f"{'and float32 TFLite (XNNPack), ' if _TFLITE.value else ''}"
        f"{os.cpu_count()} CPU threads; median of "
        f"{_ROUNDS.value * _STEPS.value} calls (min-max), ratio to "
        f"{BASELINE} on the same backbone and setting in this run.\n")
  print("| backbone | setting | layer | latency (ms) | min-max (ms) "
        "| vs bn_relu |")
  print("|---|---|---|---:|---:|---:|")
  for r in rows:
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
    print(f"| {r['model']} | {r['setting']} | {r['layer']} | "
          f"{r['median_ms']:.1f} | {r['spread_ms'][0]:.1f}-"
          f"{r['spread_ms'][1]:.1f} | {ratio} |")
  if "op_profile" in results:
    print_op_profile(results["op_profile"])
  timing.write_json(_JSON.value, dict(image_size=_SIZE.value, rows=rows,
                                      **{k: v for k, v in results.items()
                                         if k != "times"}))


if __name__ == "__main__":
  bench_flags.run(main)
