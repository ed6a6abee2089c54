r"""Train-step time and memory of every norm-activation layer in a backbone.

Builds one classifier per registered layer on a backbone registered with
Model Garden (pre-activation ResNet-50 by default; Model Garden's own ResNet-50
and EfficientNet-B0 with ``--models``), batch 16 at 64x64 by default, and
times full training steps (forward, backward, SGD update). Layers are timed in interleaved rounds, so that drift of the machine
affects all of them alike, and every figure is reported as a ratio to BN-ReLU
measured in the same run. Medians throughout.

Peak step memory is the peak of TensorFlow's allocator during a step minus
what was allocated before it (activations, gradients and temporaries; the
weights are the same for every layer). On CPU it needs the BFC allocator,
which this script enables (TF_CPU_ALLOCATOR_USE_BFC) before TensorFlow loads.

A reference row ``keras_bn_relu`` (tf_keras BatchNormalization, fused kernel,
then ReLU) shows how the library's BN-ReLU compares with Keras' own.

Every EvoNorm is timed twice in the same run: with the fused CPU kernels of
:mod:`evonorm_layers.fused` (the default path of a CPU training step; row
``evonorm_b0``) and with composite TensorFlow ops only (row
``evonorm_b0 [composite]``). ``--paths=fused`` or ``--paths=composite`` keeps
one of them. Where the fused path cannot run (GPU, TPU, XLA) both rows are the
composite ops.

  python bench/norm_act_overhead.py                       # all layers, CPU
  python bench/norm_act_overhead.py --layers=bn_relu,evonorm_b0,evonorm_s0
  python bench/norm_act_overhead.py --models=mg_resnet50,efficientnet_b0 \
      --layers=bn_relu,evonorm_b0,evonorm_s0
  python bench/norm_act_overhead.py --jit_compile=true    # XLA (GPU/TPU)
  python bench/norm_act_overhead.py --policy=mixed_bfloat16  # mixed precision

With ``--policy=mixed_bfloat16`` (or ``mixed_float16``) every model runs under
that Keras mixed-precision policy and the ratios compare with ``bn_relu``
under the same policy. (On a CPU without native bfloat16 the times are not
representative; the memory is.)
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from official.vision.configs import backbones as mg_backbones  # noqa: E402
from official.vision.modeling.backbones import factory  # noqa: E402

import evonorm_layers  # noqa: E402
from evonorm_layers import fused  # noqa: E402
from evonorm_model_garden import norm_activation as norm_lib  # noqa: E402
from evonorm_vision import registry_imports  # noqa: E402,F401
from evonorm_model_garden.backbones import configs as backbones  # noqa: E402
import bench_flags  # noqa: E402  (bench/)
import timing  # noqa: E402  (bench/)

BASELINE = "bn_relu"
KERAS_REFERENCE = "keras_bn_relu"
MODELS = {
    "resnet_v2_50": backbones.Backbone(
        type="resnet_v2", resnet_v2=backbones.ResNetV2(model_id=50)),
    # (Basic blocks: the test suite's quick run of this script.)
    "resnet_v2_18": backbones.Backbone(
        type="resnet_v2", resnet_v2=backbones.ResNetV2(model_id=18)),
    "mg_resnet50": backbones.Backbone(
        type="evonorm_resnet",
        evonorm_resnet=mg_backbones.ResNet(model_id=50)),
    "efficientnet_b0": backbones.Backbone(
        type="evonorm_efficientnet",
        evonorm_efficientnet=mg_backbones.EfficientNet(model_id="b0",
                                                       se_ratio=0.25)),
}

_LAYERS = flags.DEFINE_list(
    "layers", None, "Layers to time (default: every registered layer and "
    f"{KERAS_REFERENCE}). {BASELINE} is always included.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per step.")
_IMAGE = flags.DEFINE_integer("image_size", 64, "Image height and width.")
_MODELS = flags.DEFINE_list("models", ["resnet_v2_50"],
                            f"Backbones, among {sorted(MODELS)}.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds.")
_STEPS = flags.DEFINE_integer("steps_per_round", 4, "Timed steps per round.")
_WARMUP = flags.DEFINE_integer("warmup_steps", 3, "Untimed steps per model.")
_JIT = flags.DEFINE_enum(
    "jit_compile", "auto", ["auto", "true", "false"],
    "XLA: auto = on with a GPU/TPU, off on CPU (where XLA makes convolutions "
    "several times slower than TensorFlow's graph mode).")
_POLICY = flags.DEFINE_enum(
    "policy", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
    "Keras mixed-precision policy of every model.")
_PATHS = flags.DEFINE_list(
    "paths", ["fused", "composite"],
    "Elementwise paths of the EvoNorms to time: fused (C++ kernels where they "
    "can run) and/or composite (TensorFlow ops only).")
_JSON = flags.DEFINE_string("json_output", None, "Also write results here.")

COMPOSITE_SUFFIX = " [composite]"


class KerasBatchNormReLU(tf_keras.layers.Layer):
  """tf_keras BatchNormalization (fused when possible) followed by ReLU."""

  def __init__(self, axis=-1, epsilon=1e-5, momentum=0.9, synchronized=False,
               nonlinearity=True, **kwargs):
    super().__init__(**kwargs)
    self.bn = tf_keras.layers.BatchNormalization(
        axis=axis, epsilon=epsilon, momentum=momentum,
        synchronized=synchronized)
    self.nonlinearity = nonlinearity

  def call(self, x, training=None):
    y = self.bn(x, training=training)
    return tf.nn.relu(y) if self.nonlinearity else y


def _uses_fused_kernels(layer_name):
  return getattr(evonorm_layers.get_norm_activation(layer_name),
                 "fused_kernels", False)


def _build_step(model_name, row_name, jit_compile):
  layer_name = row_name.removesuffix(COMPOSITE_SUFFIX)
  path = "off" if row_name.endswith(COMPOSITE_SUFFIX) else "auto"
  # Every layer's model from the same seed: the same weights where the
  # layers share them, and a run that repeats itself.
  tf_keras.utils.set_random_seed(0)
  backbone = factory.build_backbone(
      input_specs=tf_keras.layers.InputSpec(
          shape=[None, _IMAGE.value, _IMAGE.value, 3]),
      backbone_config=MODELS[model_name],
      norm_activation_config=norm_lib.NormActivationConfig(
          type=layer_name, norm_momentum=0.9, norm_epsilon=1e-5,
          use_sync_bn=False, allow_group_fallback=True))
  last = max(backbone.output, key=int)
  features = tf_keras.layers.GlobalAveragePooling2D()(backbone.output[last])
  logits = tf_keras.layers.Dense(1000, dtype="float32")(features)
  model = tf_keras.Model(backbone.input, logits)
  # A small learning rate: the step repeats one batch, and only its cost is
  # measured, so training must merely stay finite.
  optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)
  loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function(jit_compile=jit_compile)
  def step(images, labels):
    with fused.forced(path):  # read while tracing
      with tf.GradientTape() as tape:
        loss = loss_fn(labels, model(images, training=True))
      grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  return step


def _memory_device():
  gpus = tf.config.list_logical_devices("GPU")
  return gpus[0].name if gpus else "CPU:0"


def _run_step(step, data, device):
  """Runs one step; returns (seconds, peak bytes above the starting level)."""
  tf.config.experimental.reset_memory_stats(device)
  start_bytes = tf.config.experimental.get_memory_info(device)["current"]
  start = time.perf_counter()
  loss = step(*data)
  loss.numpy()
  seconds = time.perf_counter() - start
  peak = tf.config.experimental.get_memory_info(device)["peak"]
  if not np.isfinite(loss.numpy()):
    raise FloatingPointError(f"non-finite loss {loss.numpy()}")
  return seconds, peak - start_bytes


def _measure(model_name, names, jit, device, data):
  """Median step time and peak step memory of each layer on one backbone."""
  memory = {name: 0 for name in names}

  def measured(name, step):
    """One step: its seconds, and its peak memory kept in ``memory`` from
    the last warm-up step on (the first calls' one-off allocations are not
    the step's)."""
    calls = 0

    def run():
      nonlocal calls
      seconds, peak = _run_step(step, data, device)
      calls += 1
      if calls >= _WARMUP.value:
        memory[name] = max(memory[name], peak)
      return seconds

    return run

  steps = timing.build_and_warm_up(
      names, lambda name: measured(name, _build_step(model_name, name, jit)),
      _WARMUP.value, desc=f"{model_name}: build + warm up")
  times = timing.interleaved(steps, _ROUNDS.value, _STEPS.value,
                             desc=f"{model_name}: timing rounds")
  return [dict(model=model_name, layer=name, median_step_ms=1e3 * median,
               time_ratio=ratio, peak_step_mib=memory[name] / 2**20,
               memory_ratio=memory[name] / memory[BASELINE],
               timed_steps=len(times[name]))
          for name, (median, ratio) in timing.medians_and_ratios(
              times, BASELINE).items()]


def main(argv):
  del argv
  tf.get_logger().setLevel("ERROR")  # one tf.function per model retraces
  evonorm_layers.register_norm_activation(KERAS_REFERENCE, KerasBatchNormReLU,
                                          overwrite=True)
  with bench_flags.checked(("layers",)):
    unknown = sorted(set(_MODELS.value) - set(MODELS))
    if unknown:
      raise app.UsageError(f"Unknown --models {unknown}; choose among "
                           f"{sorted(MODELS)}.")
    unknown = sorted(set(_PATHS.value) - {"fused", "composite"})
    if unknown or not _PATHS.value:
      raise app.UsageError(f"--paths takes fused and/or composite; got "
                           f"{_PATHS.value}.")
  names = _LAYERS.value or (evonorm_layers.available_norm_activations())
  names = [BASELINE] + [n for n in names if n != BASELINE]
  rows_of = []
  for n in names:
    if n == KERAS_REFERENCE or not _uses_fused_kernels(n):
      rows_of.append(n)
      continue
    if "fused" in _PATHS.value:
      rows_of.append(n)
    if "composite" in _PATHS.value:
      rows_of.append(n + COMPOSITE_SUFFIX)
  names = rows_of
  tf_keras.mixed_precision.set_global_policy(_POLICY.value)
  has_accelerator = bool(tf.config.list_logical_devices("GPU") or
                         tf.config.list_logical_devices("TPU"))
  jit = {"auto": has_accelerator, "true": True, "false": False}[_JIT.value]
  device = _memory_device()
  rng = np.random.default_rng(0)
  data = (tf.constant(rng.normal(size=(_BATCH.value, _IMAGE.value,
                                       _IMAGE.value, 3)).astype(np.float32)),
          tf.constant(rng.integers(0, 1000, _BATCH.value)))
  rows = []
  for model_name in _MODELS.value:
    rows += _measure(model_name, names, jit, device, data)

  where = (f"{tf.config.list_logical_devices()[-1].device_type}, "
           f"{'XLA' if jit else 'graph mode'}, policy {_POLICY.value}")
  print(f"\nBatch {_BATCH.value} at {_IMAGE.value}x{_IMAGE.value}, {where}, "
        f"TF {tf.__version__}; median of {_ROUNDS.value * _STEPS.value} "
        f"steps; ratios to {BASELINE} on the same backbone in this run.\n")
  print("| backbone | layer | step (ms) | time vs bn_relu | "
        "peak step memory (MiB) | memory vs bn_relu |")
  print("|---|---|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['model']} | {r['layer']} | {r['median_step_ms']:.0f} | "
          f"{r['time_ratio']:.2f}x | {r['peak_step_mib']:.0f} | "
          f"{r['memory_ratio']:.2f}x |")
  timing.write_json(_JSON.value, dict(setting=where, rows=rows))


if __name__ == "__main__":
  bench_flags.run(main)
