"""The laptop preset tells the paper's good layers from its bad ones.

Runs the calibration command on the ``laptop`` preset with its real
protocols (the preset's stability ascent, quality test and training), on one
anchor and a subset of the layers to fit the suite's time; the README's
table is the full command's output on all three anchors.
"""

import json
import subprocess
import sys

import pytest

LAYERS = ["bn_relu", "gn_relu", "evonorm_b0", "evonorm_s0",
          "b0_no_global_term", "b0_max_to_add", "relu", "tanh",
          "x_times_zero"]


@pytest.mark.heavy
def test_laptop_preset_accepts_good_and_rejects_bad_layers(tmp_path):
  output = tmp_path / "calibration.json"
  result = subprocess.run(
      [sys.executable, "-m", "evonorm_layers.search.calibrate",
       "--preset=laptop", "--dataset=digits", "--anchors=resnet",
       f"--layers={','.join(LAYERS)}", f"--json_output={output}",
       "--noprogress"],
      capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  assert "CALIBRATED" in result.stdout and "MISMATCH" not in result.stdout
  rows = {r["layer"]: r for r in json.loads(output.read_text())["rows"]}
  assert list(rows) == LAYERS
  for name in ("bn_relu", "gn_relu", "evonorm_b0", "evonorm_s0"):
    assert rows[name]["status"] == "accepted", rows[name]
    assert rows[name]["fitness"]["resnet"] > 0.2  # chance is 0.1
  for name in ("b0_no_global_term", "b0_max_to_add"):
    assert rows[name]["reason"] == "stability", rows[name]
  for name in ("relu", "tanh", "x_times_zero"):
    assert rows[name]["rejection"]["stage"] == "probe", rows[name]
  assert "does not normalize" in rows["tanh"]["rejection"]["detail"]


def test_calibration_flags_are_checked():
  result = subprocess.run(
      [sys.executable, "-m", "evonorm_layers.search.calibrate",
       "--layers=bn_relu,no_such_layer"],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2
  assert "Unknown calibration layers ['no_such_layer']" in result.stderr
  assert "Traceback" not in result.stderr
