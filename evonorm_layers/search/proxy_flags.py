"""The proxy flags shared by the search, its calibration and its benchmarks.

``--preset`` (``laptop`` or ``cluster``, see ``proxy_config.PRESETS``) sets
every proxy setting; a proxy flag given on the command line overrides the preset's
value, e.g. ``--preset=laptop --train_steps=200``.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from evonorm_layers.search import proxy_config as config_lib

FLAGS = flags.FLAGS
_INTS = ("image_size", "width", "blocks", "batch_size", "groups",
         "quality_steps", "train_steps", "eval_examples", "stability_steps",
         "stability_batch", "max_examples")
_FLOATS = ("learning_rate", "weight_decay", "momentum", "quality_threshold",
           "stability_threshold", "stability_step_size")
# The proxy settings a flag can set (seed and eval_split are not flags).
NAMES = tuple(f.name for f in dataclasses.fields(config_lib.ProxyConfig)
              if f.name not in ("seed", "eval_split"))


def define(default_preset: str = "laptop"):
  """Defines ``--preset`` and one flag per proxy setting (default: the
  preset's value)."""
  flags.DEFINE_enum("preset", default_preset, sorted(config_lib.PRESETS),
                    "Proxy preset: every proxy setting below defaults to its "
                    "value (see proxy_config.PRESETS).")
  flags.DEFINE_string("dataset", None, "auto (CIFAR-10 if prepared in TFDS, "
                      "else digits), cifar10, digits, mnist5k (5000 MNIST "
                      "digits, offline), tfds:NAME, or a "
                      "directory with one subdirectory of images per class.")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir.")
  flags.DEFINE_list("anchors", None, "Anchor architectures: resnet, "
                    "mobilenet, efficientnet, or your own builder as "
                    "module.path:function (see anchors.py).")
  flags.DEFINE_alias("anchor", "anchors")
  for name in _INTS:
    flags.DEFINE_integer(name, None, f"Proxy setting (ProxyConfig.{name}; "
                         "default: the preset's).", lower_bound=0)
  for name in _FLOATS:
    flags.DEFINE_float(name, None, f"Proxy setting (ProxyConfig.{name}; "
                       "default: the preset's).")
  flags.DEFINE_enum("stability_direction", None,
                    list(config_lib.STABILITY_DIRECTIONS), "How the stability "
                    "test's ascent direction is computed (default: the "
                    "preset's).")


def given() -> dict:
  """The proxy settings given on the command line."""
  values = {name: FLAGS[name].value for name in NAMES
            if FLAGS[name].value is not None}
  if "anchors" in values:
    values["anchors"] = tuple(values["anchors"])
  return values


def proxy_config(seed: int = 0) -> config_lib.ProxyConfig:
  """The preset's config with the given flags on top."""
  return config_lib.preset(FLAGS.preset, **given(), seed=seed)
