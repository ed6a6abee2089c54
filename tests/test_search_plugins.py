"""The search on your own architecture and images, warm-started from known
layers: a user anchor (``--anchors=module:function``), an image directory
(``--dataset=DIR``) and ``--seed_layers``, end to end on Ray."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import entry_points
from tests.test_search_run import assert_one_line_error

# A user's network: a small U-Net-like classifier with the candidate at
# every norm site (what `--anchors=module:function` names).
USER_ANCHOR = '''
import tf_keras


def build_unet(make_norm, input_shape, num_classes):
  layers = tf_keras.layers
  inputs = tf_keras.Input(input_shape)
  down = make_norm()(layers.Conv2D(8, 3, padding="same")(inputs))
  pooled = layers.MaxPooling2D()(down)
  deep = make_norm()(layers.Conv2D(16, 3, padding="same")(pooled))
  up = layers.Conv2DTranspose(16, 2, strides=2)(deep)
  merged = layers.Concatenate()([up, down])
  out = make_norm(nonlinearity=False)(layers.Conv2D(8, 3, padding="same")(merged))
  features = layers.GlobalAveragePooling2D()(out)
  return tf_keras.Model(inputs, layers.Dense(num_classes)(features))


def upsamples(make_norm, input_shape, num_classes):
  inputs = tf_keras.Input(input_shape)
  x = make_norm()(tf_keras.layers.Conv2D(4, 3, padding="same")(inputs))
  x = tf_keras.layers.UpSampling2D()(x)
  x = tf_keras.layers.GlobalAveragePooling2D()(x)
  return tf_keras.Model(inputs, tf_keras.layers.Dense(num_classes)(x))


def forgets_the_norm(make_norm, input_shape, num_classes):
  inputs = tf_keras.Input(input_shape)
  x = tf_keras.layers.GlobalAveragePooling2D()(inputs)
  return tf_keras.Model(inputs, tf_keras.layers.Dense(num_classes)(x))
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
  """The anchor's module, and 3 classes of digit images as PNG files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("plugins")
  (root / "my_anchors.py").write_text(USER_ANCHOR)
  digits = load_digits()
  for label in range(3):
    folder = root / "images" / f"digit_{label}"
    folder.mkdir(parents=True)
    images = digits.images[digits.target == label][:60]
    for i, image in enumerate(images):
      pixels = np.repeat((image * 15).astype(np.uint8)[..., None], 3, -1)
      (folder / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
  return root


def _plugin_env(plugin_dir):
  return {"PYTHONPATH": os.pathsep.join([str(plugin_dir), os.getcwd(),
                                         os.environ.get("PYTHONPATH", "")])}


def _search(plugin_dir, *flags):
  return subprocess.run(
      [sys.executable, "-m", "evonorm_layers.search", *flags],
      capture_output=True, text=True, timeout=900, check=False,
      env={**os.environ, **_plugin_env(plugin_dir)})


@pytest.mark.heavy
def test_user_anchor_image_directory_and_seed_layers(plugin_dir, tmp_path):
  output_dir = tmp_path / "search"
  result = _search(
      plugin_dir, f"--output_dir={output_dir}",
      "--anchors=my_anchors:build_unet",
      f"--dataset={plugin_dir / 'images'}", "--image_size=16",
      "--batch_size=32", "--quality_steps=15", "--train_steps=25",
      "--stability_steps=3", "--eval_examples=60", "--quality_threshold=0.5",
      "--learning_rate=0.05", "--seed_layers=bn_relu,evonorm_b0",
      "--baselines=bn_relu", "--population=3", "--tournament=2",
      "--max_candidates=6", "--workers=2", "--rerank_top_k=0",
      "--noprogress")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(output_dir / "evaluations.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 6
  by_id = {r["id"]: r for r in records}
  # The seeds come first, as they are; then their mutations.
  assert [by_id[i]["origin"] for i in (0, 1)] == ["seed", "seed"]

  assert all(by_id[i]["origin"] == "seed_mutation" for i in (2,))
  # The user's network and data were used: 3 classes, its anchor's name.
  seeds = [r for r in records if r["origin"] == "seed"]
  for r in seeds:
    assert r["status"] == "accepted", r
    assert set(r["fitness"]) == {"my_anchors:build_unet"}
  with open(output_dir / "baselines.jsonl") as f:
    baselines = {r["layer"]: r for r in map(json.loads, f)}
  assert set(baselines) == {"bn_relu", "seed_0", "seed_1"}
  assert baselines["bn_relu"]["status"] == "accepted"
  report = (output_dir / "report.md").read_text()
  assert "Known layers under the same proxy" in report
  assert "seeded with bn_relu, evonorm_b0" in report
  assert "vs best known" in report
  assert "nan" not in report


MISTAKES = {
    "no_function": (["--anchors=my_anchors:no_such_function"],
                    "'my_anchors' has no function 'no_such_function'"),
    "no_module": (["--anchors=no_such_module:build"],
                  "cannot import 'no_such_module'"),
    "no_norm": (["--anchors=my_anchors:forgets_the_norm"],
                "never called make_norm"),
    "no_second_derivative": (
        ["--anchors=my_anchors:upsamples", "--stability_direction=exact"],
        r"without a second derivative \(ResizeNearestNeighborGrad\).*"
        "--stability_direction=finite_difference"),
    "no_images": (["--dataset=/no/such/images"],
                  "Unknown dataset '/no/such/images'"),
    "seed_not_in_space": (["--seed_layers=pixelnorm_relu"],
                          "'pixelnorm_relu' is not a layer of the search "
                          "space"),
    "seed_random": (["--seed_layers=evonorm_b0", "--algorithm=random"],
                    "seed_layers start an evolution"),
}


@pytest.fixture(scope="module")
def mistakes(plugin_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("mistakes")
  return root, entry_points.run("evonorm_layers.search.__main__", {
      name: [f"--output_dir={root / name}", "--dataset=digits", *flags]
      for name, (flags, _) in MISTAKES.items()}, env=_plugin_env(plugin_dir))


@pytest.mark.xdist_group("search_plugin_mistakes")
@pytest.mark.parametrize("case", MISTAKES)
def test_plugin_mistakes_are_one_line_errors(mistakes, case):
  root, outcomes = mistakes
  assert outcomes[case].returncode == 2
  assert_one_line_error(outcomes[case].stderr, MISTAKES[case][1])
  assert not (root / case / "evaluations.jsonl").exists()
