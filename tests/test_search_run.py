"""A tiny search on real Ray: killed mid-way, resumed, worker crash survived."""

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from evonorm_layers.search import controller
from tests import entry_points

TINY = ["--dataset=digits", "--image_size=16", "--width=8",
        "--batch_size=32", "--anchors=resnet", "--quality_steps=15",
        "--train_steps=20", "--stability_steps=3", "--eval_examples=100",
        "--quality_threshold=0.15", "--learning_rate=0.05",
        "--population=2", "--tournament=2",
        "--workers=2", "--rerank_top_k=2", "--noprogress"]


def _search(*flags):
  return [sys.executable, "-m", "evonorm_layers.search", *flags]


def _log(output_dir):
  path = os.path.join(output_dir, "evaluations.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [line for line in f if line.endswith("\n")]


@pytest.mark.heavy
def test_search_killed_midway_resumes_without_reevaluating(tmp_path):
  output_dir = str(tmp_path / "search")
  marker = str(tmp_path / "worker_crashed")
  env = {**os.environ, controller.CRASH_ONCE_ENV: f"1:{marker}"}
  first = subprocess.Popen(
      _search(f"--output_dir={output_dir}", "--max_candidates=6",
              "--worker_max_calls=4", *TINY),
      env=env, start_new_session=True, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while len(_log(output_dir)) < 3:
      if first.poll() is not None:
        pytest.fail("the search exited early:\n" + first.stderr.read()[-3000:])
      assert time.time() < deadline, "fewer than 3 evaluations in 300 s"
      time.sleep(0.5)
  finally:
    try:
      os.killpg(first.pid, signal.SIGKILL)  # the driver, Ray and its workers
    except ProcessLookupError:
      pass  # it had exited (the failure above says why)
    first.wait()
  before = _log(output_dir)
  assert 3 <= len(before) < 6

  second = subprocess.run(
      _search(f"--output_dir={output_dir}", "--resume",
              "--worker_max_calls=4"),
      capture_output=True, text=True, timeout=600, check=False)
  assert second.returncode == 0, second.stderr[-3000:]
  after = _log(output_dir)
  assert after[:len(before)] == before  # finished work kept as it was
  records = [json.loads(line) for line in after]
  ids = [r["id"] for r in records]
  assert len(records) == 6 and len(set(ids)) == 6, ids
  for r in records:
    assert r["status"] in ("accepted", "rejected")
    assert r["reason"] in (None, "nan", "stability", "quality")
    assert r["formula"] and r["fingerprint"] and "total" in r["seconds"]
  # The worker evaluating candidate 1 died once; Ray retried the task.
  assert os.path.exists(marker)
  assert ids.count(1) == 1
  for name in ("report.md", "best_layers.json", "state.json"):
    assert os.path.getsize(os.path.join(output_dir, name)) > 0, name
  with open(os.path.join(output_dir, "report.md")) as f:
    text = f.read()
  assert "Candidates evaluated: 6" in text
  # Evolution starts warm by default: BN-ReLU and EvoNorm-B0 first, and
  # neither is ever reported as a found layer.
  assert [r["origin"] for r in sorted(records, key=lambda r: r["id"])[:2]
          ] == ["seed", "seed"]
  assert "seeded with bn_relu, evonorm_b0" in text
  with open(os.path.join(output_dir, "best_layers.json")) as f:
    found = json.load(f)
  seeds = {r["fingerprint"] for r in records if r["origin"] == "seed"}
  assert not {f"searched_{s}" for s in seeds} & set(found)
  # A plot is drawn when it has something to show, else the report says
  # why (no random layer is trained in a warm start).
  for name in ("figure2_random_layers.png", "figure6_progress.png",
               "pareto_front.png"):
    drawn = os.path.exists(os.path.join(output_dir, name))
    assert (f"]({name})" in text) == drawn, name
    assert drawn == (name != "figure2_random_layers.png" and bool(found))
  assert "No random layers' accuracy plot" in text
  # Each record has its worker's memory; the report sums it up.
  assert all(r["worker_rss_mib"] > 100 for r in records
             if r.get("cached_from") is None), records
  assert re.search(r"Workers' resident memory: at most \d+ MiB", text), text
  # --worker_max_calls=4: Ray replaced each worker process after four
  # evaluations (the baselines' and candidates' records name their worker;
  # without the flag one worker did 7 of them).
  with open(os.path.join(output_dir, "baselines.jsonl")) as f:
    evaluated = [json.loads(line) for line in f] + records
  per_worker = collections.Counter(r["worker"] for r in evaluated
                                   if r.get("worker"))
  assert sum(per_worker.values()) >= 6, per_worker
  assert max(per_worker.values()) <= 4, per_worker


def test_bad_flags_and_output_dir_misuse_are_clear_errors(tmp_path):
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "config.json").write_text(json.dumps(
      controller.SearchConfig().to_dict()))
  file_path = tmp_path / "a_file"
  file_path.write_text("")
  out = f"--output_dir={tmp_path / 'out'}"
  cases = {
      "tournament": ([out, "--tournament=5", "--population=2"],
                     r"tournament \(5\) cannot exceed population \(2\)"),
      "anchors": ([out, "--anchors=resnet,vgg"],
                  r"Unknown proxy anchors \['vgg'\]"),
      "quality_steps": ([out, "--quality_steps=50", "--train_steps=20"],
                        r"quality_steps \(50\) must be between 0 and "
                        r"train_steps \(20\)"),
      "existing": ([f"--output_dir={existing}"],
                   "already holds a search.*--resume"),
      "resume_empty": ([f"--output_dir={tmp_path / 'empty'}", "--resume"],
                       "holds no search"),
      "resume_changed": ([f"--output_dir={existing}", "--resume",
                          "--criterion=average"],
                         "these flags differ from it: --criterion"),
      "a_file": ([f"--output_dir={file_path}"],
                 "is a file: pass a directory"),
  }
  outcomes = entry_points.run("evonorm_layers.search.__main__", {
      name: flags for name, (flags, _) in cases.items()})
  for name, (_, message) in cases.items():
    assert outcomes[name].returncode == 2, name
    assert_one_line_error(outcomes[name].stderr, message)
    assert outcomes[name].stderr.startswith(
        "python -m evonorm_layers.search: error: "), name
  assert not (tmp_path / "out").exists()


def assert_one_line_error(stderr, message):
  """The error alone: one line naming the problem, no traceback, no flag
  help (TensorFlow's own start-up lines aside)."""
  lines = [l for l in stderr.splitlines() if ": error: " in l]
  assert len(lines) == 1, stderr[-3000:]
  assert __import__("re").search(message, lines[0]), (message, lines[0])
  assert "Traceback" not in stderr, stderr[-3000:]
  assert "--output_dir: Directory" not in stderr  # the flag help
  assert len(stderr.splitlines()) < 12, stderr[-3000:]
