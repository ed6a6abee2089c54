"""Runs one entry point on several command lines in one Python process.

A bad-input test checks what a user sees: the exit status, and one error
line on stderr with no traceback and no flag help. Each of those used to
start its own interpreter, and importing TensorFlow and Model Garden costs
most of a bad-input test's time. Here one child process imports the entry
point once and runs its ``main`` through ``cli.run`` (as its ``__main__``
does) for every command line, with the flags reset in between, capturing
what each run printed and its exit status, as the entry point would have in
its own process.
(TensorFlow's C++ start-up lines go to the real stderr, not to a case's.)

  outcomes = entry_points.run("evonorm_gan.train", {"case": ["--flag=..."]})
  outcomes["case"].returncode, outcomes["case"].stderr
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import os
import subprocess
import sys
import traceback
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Outcome:
  returncode: int
  stdout: str
  stderr: str


def run(module: str, cases: dict[str, list[str]], timeout: int = 600,
        env: dict | None = None) -> dict[str, Outcome]:
  """Runs ``python -m module *argv`` (or ``python module *argv`` for a
  script, ``bench/NAME.py``) for each ``argv`` of ``cases`` (in one child
  process); returns each case's outcome by name."""
  result = subprocess.run(
      [sys.executable, "-m", "tests.entry_points", module],
      input=json.dumps(cases), capture_output=True, text=True,
      timeout=timeout, check=False, cwd=REPO,
      env=None if env is None else {**os.environ, **env})
  assert result.returncode == 0, result.stderr[-3000:]
  outcomes = json.loads(result.stdout.splitlines()[-1])
  return {name: Outcome(**o) for name, o in outcomes.items()}


def _exit_status(code) -> int:
  if code is None:
    return 0
  return code if isinstance(code, int) else 1  # sys.exit("message")


def _run_cases(module_name: str, cases: dict[str, list[str]]) -> dict:
  """``module_name``: a module run with ``python -m``, or a script's path
  relative to the repository (``bench/NAME.py``)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from evonorm_model_garden import cli  # pylint: disable=g-import-not-at-top
  main = types.ModuleType("__main__")
  if module_name.endswith(".py"):  # a script, importing its folder's modules
    folder, script = os.path.split(module_name)
    sys.path.insert(0, os.path.join(REPO, folder))
    module = importlib.import_module(script.removesuffix(".py"))
    sys.argv = [module_name]  # the program name in error lines
  else:
    module = importlib.import_module(module_name)
    # The program name in error lines comes from __main__'s module spec.
    main.__spec__ = importlib.util.find_spec(module_name)
  if hasattr(module, "define_flags"):  # what its `__main__` block does first
    module.define_flags()
  sys.modules["__main__"] = main
  outcomes = {}
  for name, argv in cases.items():
    flags.FLAGS.unparse_flags()
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(
        stderr):
      try:
        cli.run(module.main, argv=[module_name, *argv])
        code = 0
      except SystemExit as exit_:
        code = _exit_status(exit_.code)
      except Exception:  # pylint: disable=broad-except
        traceback.print_exc()  # what the interpreter would have printed
        code = 1
    outcomes[name] = dict(returncode=code, stdout=stdout.getvalue(),
                          stderr=stderr.getvalue())
  return outcomes


if __name__ == "__main__":
  outcomes_ = _run_cases(sys.argv[1], json.loads(sys.stdin.read()))
  print("\n" + json.dumps(outcomes_))
