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

from evonorm_layers.search import calibrate
from tests import entry_points

LAYERS = ["bn_relu", "gn_relu", "evonorm_b0", "evonorm_s0",
          "b0_no_global_term", "b0_max_to_add", "relu", "tanh",
          "x_times_zero"]


@pytest.mark.heavy
def test_laptop_preset_accepts_good_and_rejects_bad_layers(tmp_path):
  output = tmp_path / "new_folder" / "calibration.json"  # created
  result = subprocess.run(
      [sys.executable, "-m", "evonorm_layers.search.calibrate",
       "--preset=laptop", "--dataset=digits", "--anchors=resnet",
       f"--layers={','.join(LAYERS)}", f"--json_output={output}",
       "--noprogress"],
      capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  assert ": CALIBRATED (accepts the good layers and rejects the bad ones)" \
      in result.stdout, result.stdout[-3000:]
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


def test_calibration_flags_are_checked(tmp_path):
  (tmp_path / "a_file").write_text("")
  outcomes = entry_points.run("evonorm_layers.search.calibrate", {
      "unknown_layer": ["--layers=bn_relu,no_such_layer"],
      "output_is_a_folder": [f"--json_output={tmp_path}"],
      "output_under_a_file": [f"--json_output={tmp_path}/a_file/c.json"],
      "not_a_number": ["--seed=one"],
  })
  expected = {
      "unknown_layer": "Unknown calibration layers ['no_such_layer']",
      "output_is_a_folder": f"--json_output='{tmp_path}' is a directory",
      "output_under_a_file": f"is under '{tmp_path}/a_file', which is a file",
      "not_a_number": "flag --seed=one: invalid literal for int()",
  }
  for name, message in expected.items():
    result = outcomes[name]
    assert result.returncode == 2, (name, result.stderr[-2000:])
    assert result.stderr.startswith(
        "python -m evonorm_layers.search.calibrate: error: "), result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, (
        name, result.stderr)


def _row(layer, ok=True):
  expected = "accept" if layer in calibrate.GOOD else "reject"
  return {"layer": layer, "expected": expected, "ok": ok}


def test_verdict_says_what_a_subset_did_not_test():
  assert calibrate.verdict([_row("bn_relu"), _row("relu")]).startswith(
      "CALIBRATED (accepts the good layers and rejects the bad ones)")
  only_good = calibrate.verdict([_row("bn_relu"), _row("evonorm_b0")])
  assert only_good.startswith("PARTLY CHECKED") and "no bad layers" in only_good
  only_bad = calibrate.verdict([_row("relu")])
  assert only_bad.startswith("PARTLY CHECKED") and "no good layers" in only_bad
  wrong = calibrate.verdict([_row("bn_relu"), _row("tanh", ok=False)])
  assert wrong == "NOT CALIBRATED (tanh got the wrong verdict)"
