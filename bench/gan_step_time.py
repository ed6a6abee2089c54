r"""BigGAN-deep training-step time with each of Table 6's generator layers.

Builds BigGAN-deep at 128x128 (the width is ``--ch``; 128 is the paper's)
with each layer at every generator norm site and times one discriminator
step plus one generator step of the real trainer (hinge loss, Adam, EMA
update), small batch, CPU graph mode, in interleaved rounds. Medians, and
ratios to ``bn_relu`` measured in the same run.

  python bench/gan_step_time.py                      # ch 32, batch 4
  python bench/gan_step_time.py --ch=128 --batch_size=2
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import numpy as np
import tensorflow as tf
from official.common import distribute_utils

from evonorm_gan import train as train_lib
from evonorm_gan import trainer as trainer_lib
import bench_flags  # bench/
import timing  # bench/
# pylint: enable=g-import-not-at-top,wrong-import-position

BASELINE = "bn_relu"
LAYERS = ["bn_relu", "evonorm_b0", "evonorm_s0", "gn_relu", "ln_relu",
          "pixelnorm_relu"]

_LAYERS = flags.DEFINE_list("layers", LAYERS, "Registered layer names.")
_RESOLUTION = flags.DEFINE_integer("resolution", 128, "Image resolution.")
_CH = flags.DEFINE_integer("ch", 32, "Channel width multiplier (paper: 128).")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Images per step.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds.")
_STEPS = flags.DEFINE_integer("steps_per_round", 3, "Timed steps per round.")
_JSON = flags.DEFINE_string("json_output", None, "Also write results here.")


def _step(layer: str):
  config = train_lib.load_config(
      "evonorm_biggan_deep_imagenet128", (), ",".join([
          f"norm_activation.type={layer}", "norm_activation.use_sync_bn=false",
          f"generator.resolution={_RESOLUTION.value}",
          f"generator.ch={_CH.value}", f"discriminator.ch={_CH.value}",
          f"data.global_batch_size={_BATCH.value}"]))
  strategy = distribute_utils.get_distribution_strategy("one_device")
  trainer = trainer_lib.GANTrainer(config, strategy, "/tmp/unused")
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(-1, 1, (_BATCH.value, _RESOLUTION.value,
                                           _RESOLUTION.value, 3)), tf.float32)
  labels = tf.constant(rng.integers(0, 1000, _BATCH.value), tf.int32)

  @tf.function
  def step():
    d = trainer._d_step(images, labels)  # pylint: disable=protected-access
    g = trainer._g_step(_BATCH.value)  # pylint: disable=protected-access
    trainer._ema_update()  # pylint: disable=protected-access
    return d["d_loss"] + g["g_loss"]

  return lambda: float(step())


def main(argv):
  del argv
  with bench_flags.checked(("layers",)):
    names = [BASELINE] + [n for n in _LAYERS.value if n != BASELINE]
  steps = timing.build_and_warm_up(names, _step)
  times = timing.interleaved(
      {name: timing.timed(name, step) for name, step in steps.items()},
      _ROUNDS.value, _STEPS.value)
  results = timing.medians_and_ratios(times, BASELINE)
  print(f"\nBigGAN-deep {_RESOLUTION.value}x{_RESOLUTION.value}, ch "
        f"{_CH.value}, batch {_BATCH.value}: one D step + one G step, CPU "
        f"graph mode; median of {_ROUNDS.value * _STEPS.value} steps, ratio "
        f"to {BASELINE} in this run.\n")
  print("| generator layer | step (ms) | time vs bn_relu |")
  print("|---|---:|---:|")
  rows = [dict(layer=name, median_step_ms=1e3 * median, time_ratio=ratio,
               steps_ms=[1e3 * t for t in times[name]])
          for name, (median, ratio) in results.items()]
  for r in rows:
    print(f"| {r['layer']} | {r['median_step_ms']:.0f} | "
          f"{r['time_ratio']:.2f}x |")
  timing.write_json(_JSON.value, dict(
      resolution=_RESOLUTION.value, ch=_CH.value, batch_size=_BATCH.value,
      rows=rows))


if __name__ == "__main__":
  bench_flags.run(main)
