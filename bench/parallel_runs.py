"""Runs a benchmark's runs as processes of their own, a few at a time.

The quality benchmarks (``small_batch.py``, ``gan_quality.py``,
``detection_quality.py``) train many small models. Each run is its script
started again with ``--run=SPEC`` (a JSON object): its own process, so one
run's graphs, strategies and logical devices never meet another's, and the
cores are split between the runs at once (``threads`` in the spec). A run
writes its result to ``RUNS_DIR/NAME.json`` when it has finished (written
aside and renamed), so a killed benchmark started again redoes only the
runs without a result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def threads_per_run(parallel: int) -> int:
  return max(1, (os.cpu_count() or 2) // parallel)


def result_path(runs_dir: str, name: str) -> str:
  return os.path.join(runs_dir, f"{name}.json")


def write_result(runs_dir: str, name: str, result: dict):
  path = result_path(runs_dir, name)
  with open(path + ".tmp", "w") as f:
    json.dump(result, f)
  os.replace(path + ".tmp", path)


def read_spec(flag_value: str) -> tuple[dict, int]:
  """A ``--run`` flag's spec, without its thread count, and the count."""
  spec = json.loads(flag_value)
  return spec, spec.pop("threads")


def run_child(flag_value: str | None, runs_dir: str, run) -> bool:
  """In a run's own process (``--run=SPEC`` given): calls ``run(spec,
  threads) -> (name, result)`` and writes the result; returns whether this
  process was a run (the benchmark's ``main`` then returns)."""
  if not flag_value:
    return False
  spec, threads = read_spec(flag_value)
  write_result(runs_dir, *run(spec, threads))
  return True


def set_threads(threads: int):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)


def run_all(specs: dict[str, dict], script: str, flags: list[str],
            runs_dir: str, parallel: int, desc: str) -> dict[str, dict]:
  """Runs ``script --run=SPEC *flags`` for every spec (by name) that has no
  result yet, ``parallel`` at a time, each logging to ``RUNS_DIR/NAME.log``;
  returns every result by name. Raises RuntimeError naming the log of a run
  that failed (the others are stopped)."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  os.makedirs(runs_dir, exist_ok=True)
  todo = [n for n in specs if not os.path.exists(result_path(runs_dir, n))]
  threads = threads_per_run(parallel)
  running = {}
  bar = tqdm(total=len(specs), initial=len(specs) - len(todo), unit="run",
             desc=desc, dynamic_ncols=True)
  try:
    while todo or running:
      while todo and len(running) < parallel:
        name = todo.pop(0)
        log = open(os.path.join(runs_dir, f"{name}.log"), "w")
        spec = json.dumps({**specs[name], "threads": threads})
        running[name] = (subprocess.Popen(
            [sys.executable, os.path.abspath(script), f"--run={spec}",
             *flags], stdout=log, stderr=subprocess.STDOUT), log)
      time.sleep(1)
      for name, (process, log) in list(running.items()):
        if process.poll() is None:
          continue
        log.close()
        del running[name]
        if process.returncode or not os.path.exists(
            result_path(runs_dir, name)):
          with open(log.name) as f:
            last = (f.read().strip().splitlines() or ["(no output)"])[-1]
          raise RuntimeError(f"run {name} failed (see {log.name}): {last}")
        bar.update(1)
  finally:
    bar.close()
    for process, log in running.values():
      process.kill()
      log.close()
  results = {}
  for name in specs:
    with open(result_path(runs_dir, name)) as f:
      results[name] = json.load(f)
  return results


def passed_flags(flags_obj, names) -> list[str]:
  """``--name=value`` for each of ``names``, to pass a benchmark's settings
  on to its runs."""
  return [flags_obj[name].serialize() or f"--{name}=" for name in names]
