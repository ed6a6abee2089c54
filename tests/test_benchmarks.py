"""The README's benchmark commands, shrunken (same code paths, tiny sizes)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from tests import entry_points
from tests.overrides import EAGER

# Each runs a benchmark end to end in its own process.
pytestmark = pytest.mark.heavy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_PATH = pathlib.Path(REPO)
# The GAN quickstart's experiment, narrow and two steps long, its loop run
# eagerly (test_gan.py compiles it).
GAN_TINY = ("generator.ch=4,discriminator.ch=4,data.global_batch_size=8,"
            "data.source=digits,trainer.train_steps=2,trainer.steps_per_loop=2,"
            "trainer.train_tf_function=false,"
            "trainer.summary_interval=2,trainer.checkpoint_interval=2,"
            "trainer.image_summary_interval=2,evaluation.num_samples=40,"
            "evaluation.batch_size=20,evaluation.standing_statistics_batches=2")


def _run(script, *flags, timeout=600):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", script), *flags],
      capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


# Bad input to a benchmark: one line before any work (each benchmark's
# cases in one child process).
BAD_INPUT = {
    "bench/serving_latency.py": {
        "unknown_model": (["--models=resnet_v9"],
                          r"Unknown --models \['resnet_v9'\]; choose among"),
        "json_output_is_a_folder": (["--json_output={tmp}"],
                                    r"--json_output='.*' is a directory: "
                                    "name the file to write"),
        "not_a_number": (["--rounds=abc"], r"flag --rounds=abc: invalid "
                         r"literal for int\(\)"),
    },
    "bench/norm_act_overhead.py": {
        "unknown_layer": (["--layers=bn_relu,evonorm_b9"],
                          r"Unknown normalization-activation layer "
                          r"'evonorm_b9'. Valid names:"),
    },
    "bench/small_batch.py": {
        "output_dir_is_a_file": (["--output_dir={tmp}/file"],
                                 r"--output_dir='.*file' is a file: pass a "
                                 "directory"),
    },
    "bench/search_quality.py": {
        "unknown_seed_layer": (["--seed_layers=evonorm_b9",
                                "--output_dir={tmp}/search_quality"],
                               r"--seed_layers: 'evonorm_b9' is not a layer "
                               "of the search space"),
    },
}


@pytest.mark.parametrize("script", BAD_INPUT)
def test_bad_input_is_one_line_before_work(script, tmp_path):
  (tmp_path / "file").write_text("not a folder")
  cases = BAD_INPUT[script]
  outcomes = entry_points.run(script, {
      name: [a.format(tmp=tmp_path) for a in argv]
      for name, (argv, _) in cases.items()})
  for name, (_, pattern) in cases.items():
    result = outcomes[name]
    assert result.returncode == 2, (name, result.stderr[-3000:])
    assert result.stderr.count("\n") == 1, (name, result.stderr[-3000:])
    assert result.stderr.startswith(f"python {script}: error: "), name
    assert re.search(pattern, result.stderr), (name, result.stderr)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_norm_act_overhead(tmp_path):
  """Both paths of a layer with fused kernels, under the TPU's mixed
  precision policy (float32 is the same code with another policy). Not
  smaller: at batch 2 and 32x32 the last stage is 1x1, where EvoNorm-B0
  divides by the standard deviation of 2 numbers and the repeated step
  diverges."""
  output = tmp_path / "rows.json"
  _run("norm_act_overhead.py", "--layers=evonorm_b0",
       "--models=resnet_v2_18", "--image_size=64", "--batch_size=4",
       "--rounds=1", "--steps_per_round=2", "--warmup_steps=1",
       "--paths=fused,composite", "--policy=mixed_bfloat16",
       f"--json_output={output}")
  rows = json.loads(output.read_text())["rows"]
  assert [r["layer"] for r in rows] == [
      "bn_relu", "evonorm_b0", "evonorm_b0 [composite]"]
  assert rows[0]["time_ratio"] == 1.0 and rows[0]["memory_ratio"] == 1.0
  assert all(r["median_step_ms"] > 0 and r["peak_step_mib"] > 0 and
             r["model"] == "resnet_v2_18" for r in rows)
  assert json.loads(output.read_text())["setting"].endswith(
      "policy mixed_bfloat16")


SEARCH_TINY = ["--anchors=resnet", "--width=8", "--quality_steps=15",
               "--train_steps=20", "--stability_steps=2", "--dataset=digits",
               "--eval_examples=100", "--quality_threshold=0.15",
               "--learning_rate=0.05"]


def test_search_throughput(tmp_path):
  output = tmp_path / "throughput.json"
  _run("search_throughput.py", "--random_layers=3",
       "--reference_layers=evonorm_b0", "--reference_rounds=2",
       "--workers=1",
       # The third placement's: test_search_program.
       "--placements=hybrid,compiled",
       *SEARCH_TINY, f"--output_dir={tmp_path / 'search'}",
       f"--json_output={output}", timeout=900)
  results = json.loads(output.read_text())
  for placement in ("hybrid", "compiled"):
    reference = results[placement]["reference_layers"]["evonorm_b0"]
    assert reference["status"] == "accepted"
    assert len(reference["rounds"]) == 2
    assert reference["seconds"] == np.median(reference["rounds"])
    stages = results[placement]["stage_costs"]["stages"]["accepted"]
    assert stages["training"] > 0 and stages["total"] > 0
    for key in ("candidates_per_core_hour_wall",
                "candidates_per_core_hour_evaluation",
                "full_evaluation_median_s", "search_speedup_from_rejection"):
      assert 0 < results[placement][key] < np.inf, key
    fresh = sum(o["count"] for o in results[placement]["outcomes"].values())
    assert fresh + results[placement]["cache_hits"] == 3


def test_search_quality(tmp_path):
  """Warm-started evolution and random search, one seed each, four
  candidates."""
  _run("search_quality.py", f"--output_dir={tmp_path}",
       "--seeds=0", "--max_candidates=4", "--max_minutes=10",
       "--workers=1", "--parallel_runs=2", "--population=2",
       "--tournament=2", "--algorithms=random",
       "--seed_layers=evonorm_b0", "--baselines=bn_relu",
       *SEARCH_TINY, timeout=900)
  assert (tmp_path / "search_quality.png").stat().st_size > 0
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary) == {"evolution_seeded", "random"}
  origins = {json.loads(line)["origin"] for line in (
      tmp_path / "evolution_seeded_seed0" / "evaluations.jsonl"
  ).read_text().splitlines()}
  assert "seed_mutation" in origins, origins
  # Both ran at once; run again, the finished runs are kept, not redone.
  again = _run("search_quality.py", f"--output_dir={tmp_path}",
               "--seeds=0", "--max_candidates=4", "--algorithms=random",
               "--seed_layers=evonorm_b0", *SEARCH_TINY, timeout=300)
  assert again.stdout.count("finished before") == 2
  assert all(run["candidates"] == 4 for runs in summary.values()
             for run in runs)
  # The equal-budget panel: wall time from the first evaluation to the last.
  assert all(0 < run["minutes"] * 60 < 600 for runs in summary.values()
             for run in runs)
  for runs in summary.values():
    for run in runs:
      assert run["baselines"]["bn_relu"]["status"] == "accepted"
      assert 0 <= run["accepted"] <= run["candidates"]


def test_detection_cost(tmp_path):
  """MAdds/params and training-step time, on the quickstart's narrow model
  (counting Table 5's full models takes minutes per layer)."""
  output = tmp_path / "cost.json"
  _run("detection_cost.py", "--models=shapes_quickstart",
       "--layers=bn_relu", "--image_size=128", "--step_time",
       "--step_image_size=128", "--rounds=1", "--steps_per_round=1",
       f"--json_output={output}", timeout=900)
  results = json.loads(output.read_text())
  (cost,), (step,) = results["cost"], results["step_time"]
  assert cost["model"] == step["model"] == "shapes_quickstart"
  assert cost["layer"] == step["layer"] == "bn_relu"
  assert 0 < cost["matmul_madds_b"] <= cost["madds_b"]
  assert cost["params_m"] > 0 and cost["paper_madds_b"] is None
  assert step["step_ms"] > 0 and step["ratio"] == 1.0


def test_gan_step_time(tmp_path):
  # The baseline alone: every layer's row is the same code (a second layer
  # costs another minute of tracing).
  output = tmp_path / "gan.json"
  _run("gan_step_time.py", "--layers=bn_relu", "--resolution=32", "--ch=4",
       "--batch_size=2", "--rounds=1", "--steps_per_round=1",
       f"--json_output={output}")
  (row,) = json.loads(output.read_text())["rows"]
  assert row["layer"] == "bn_relu" and row["time_ratio"] == 1.0
  assert row["median_step_ms"] > 0 and len(row["steps_ms"]) == 1


def test_small_batch(tmp_path):
  """Every kind of run once (a batch size, per-replica against synchronized
  statistics on 2 replicas, a searched layer), a few steps each; killed
  runs are resumed, finished ones kept."""
  searched = json.loads((REPO_PATH / "docs" /
                         "search_quality_best_layers.json").read_text())
  name = sorted(searched)[0]
  layers_file = tmp_path / "best_layers.json"
  layers_file.write_text(json.dumps({name: searched[name]}))
  flags = [f"--output_dir={tmp_path / 'out'}", "--layers=bn_relu",
           "--batch_sizes=2", "--seeds=0", "--epochs=1",
           "--sync_layers=evonorm_b0", "--sync_batch=2", "--replicas=2",
           f"--searched_layers={layers_file}", "--searched_batches=4",
           f"--params_override={EAGER},trainer.train_steps=2,"
           "trainer.steps_per_loop=1,trainer.validation_interval=2,"
           "trainer.validation_steps=1,"
           "task.validation_data.global_batch_size=8"]
  _run("small_batch.py", *flags, timeout=900)
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  runs = {r["name"]: r for r in results["results"]}
  assert set(runs) == {"bn_relu_b2x1_seed0", "evonorm_b0_b2x2_local_seed0",
                       "evonorm_b0_b2x2_sync_seed0", f"{name}_b4x1_seed0"}
  assert all(0.0 <= r["accuracy"] <= 1.0 and r["steps"] == 2
             for r in runs.values())
  assert runs["evonorm_b0_b2x2_sync_seed0"]["synchronized"]
  assert (tmp_path / "out" / "small_batch.png").stat().st_size > 0
  again = _run("small_batch.py", *flags, timeout=300)
  assert "4/4" in again.stderr  # every run found finished, none redone


def test_gan_quality(tmp_path):
  _run("gan_quality.py", f"--output_dir={tmp_path}",
       "--layers=evonorm_s0", "--seeds=0", "--parallel=1",
       "--params_override=" + GAN_TINY, timeout=900)
  (run,) = json.loads((tmp_path / "results.json").read_text())
  assert run["layer"] == "evonorm_s0" and run["steps"] == 2
  assert 0.0 <= run["class_agreement"] <= 1.0 and np.isfinite(run["FID"])
  assert run["IS"] >= 1.0
  assert (tmp_path / "gan_quality.png").stat().st_size > 0


def test_detection_quality(tmp_path):
  _run("detection_quality.py", f"--output_dir={tmp_path}",
       "--layers=evonorm_s0", "--seeds=0", "--parallel=1",
       "--replicas=2", "--per_replica=2",
       f"--params_override={EAGER},trainer.train_steps=2,"
       "trainer.steps_per_loop=1,trainer.validation_interval=2,"
       "trainer.validation_steps=1", timeout=900)
  (run,) = json.loads((tmp_path / "results.json").read_text())
  assert run["layer"] == "evonorm_s0" and run["steps"] == 2
  assert -1.0 <= run["box_ap"] <= 1.0 and -1.0 <= run["mask_ap"] <= 1.0
  assert run["objects"] > 0 and 0 <= run["found"] <= run["objects"]
  assert np.asarray(run["confusion"]).shape == (4, 4)
  assert (tmp_path / "detection_quality.png").stat().st_size > 0


def test_serving_latency(tmp_path):
  """Export, then time in a fresh process: SavedModel at two batch sizes
  and TFLite at batch 1, the baseline added to the layers asked for."""
  output = tmp_path / "serving.json"
  _run("serving_latency.py", "--models=mobilenet_v2", "--layers=evonorm_s0",
       "--image_size=32", "--batch_sizes=1,2", "--rounds=1",
       "--steps_per_round=1", f"--work_dir={tmp_path / 'exports'}",
       "--op_profile", f"--json_output={output}")
  results = json.loads(output.read_text())
  rows = results["rows"]
  # Where the time goes: the EvoNorm-S0 export runs sigmoids, BN-ReLU's none.
  profile = results["op_profile"]
  assert set(profile) == {"mobilenet_v2__bn_relu", "mobilenet_v2__evonorm_s0"}
  assert all(ms >= 0 for ops in profile.values() for ms in ops.values())
  assert "Sigmoid" in profile["mobilenet_v2__evonorm_s0"]
  assert "Sigmoid" not in profile["mobilenet_v2__bn_relu"]
  settings = ("batch 1", "batch 2", "tflite batch 1")
  assert sorted((r["setting"], r["layer"]) for r in rows) == sorted(
      (s, l) for s in settings for l in ("bn_relu", "evonorm_s0"))
  for r in rows:
    assert r["model"] == "mobilenet_v2" and r["median_ms"] > 0
    assert r["ratio"] == 1.0 if r["layer"] == "bn_relu" else r["ratio"] > 0
