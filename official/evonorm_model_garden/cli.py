"""What the project's command-line entry points share.

Bad input (an unknown experiment or layer, a missing dataset or file, flags
that contradict each other) is reported as one line on stderr, with exit
status 2, before any work starts: no traceback and no page of flag help.
Entry points check their input inside :func:`user_errors`; errors raised
later, during the work itself, keep their tracebacks.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback

from absl import app
from absl import flags

from evonorm_layers import startup

# The errors the project raises for bad input, each with a message that says
# what was wrong and how to fix it.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError,
               NotADirectoryError, IsADirectoryError, PermissionError,
               app.UsageError)


@contextlib.contextmanager
def user_errors(program: str | None = None):
  """Turns bad-input errors raised inside into one line and exit status 2
  (with ``--verbose`` or ``EVONORM_VERBOSE=1``, the traceback too)."""
  try:
    yield
  except USER_ERRORS as error:
    if startup.verbose():
      traceback.print_exc()
    fail(str(error), program)


def fail(message: str, program: str | None = None, status: int = 2):
  """Prints ``PROGRAM: error: MESSAGE`` as one line; exits with ``status``
  (2: bad input)."""
  name = program or _program_name()
  print(f"{name}: error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(status)


# Model Garden's blow-up check (trainer.recovery_max_trials) ends training
# with a RuntimeError saying one of these; the GAN trainer raises
# FloatingPointError.
_DIVERGED = ("The loss value is NaN", "which is larger than the bound")


@contextlib.contextmanager
def stop_on_divergence(setting: str, model_dir: str, advice: str):
  """Turns a training run that diverged (a non-finite loss, or one above
  Model Garden's ``trainer.loss_upper_bound``) into one line naming the
  layer ``setting``, the checkpoint left as the latest (saved before the
  loss went bad: training stops before it saves) and what to try; exit
  status 1."""
  try:
    yield
  except (FloatingPointError, RuntimeError) as error:
    text = str(error)
    if isinstance(error, RuntimeError) and not any(
        d in text for d in _DIVERGED):
      raise
    if startup.verbose():
      traceback.print_exc()
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    latest = tf.train.latest_checkpoint(model_dir)
    kept = (f"the latest checkpoint, {latest}, is the last one before it "
            "and a restart resumes from there" if latest else
            "no checkpoint was written before it")
    fail(f"training diverged with {setting} ({text.splitlines()[0]}); "
         f"{kept}. {advice}", status=1)


# What to try when a Model Garden training run diverges.
MODEL_GARDEN_ADVICE = (
    "Try a lower learning rate (trainer.optimizer_config.learning_rate), a "
    "longer warm-up (trainer.optimizer_config.warmup) or zero_init_residual="
    "true on the backbone")
# ... and when Model Garden's recovery is off.
MODEL_GARDEN_RECOVERY_ADVICE = (
    ", or trainer.recovery_max_trials=3 to restart from the last checkpoint "
    "automatically")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, a bad flag (unknown, missing, out of range, not a
  number) reported as one line instead of absl's "FATAL Flags parsing
  error" and usage hint."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    missing = re.findall(r"Flag --(\w+) must have a value other than None",
                         str(error))
    if missing:
      fail(f"missing {' '.join(f'--{m}=...' for m in missing)}; see "
           "--helpshort for what each one takes.")
    fail(f"{error}; see --helpshort for the flags.")


def run(main, argv: list[str] | None = None):
  """``absl.app.run(main)`` with :func:`parse_flags`: every entry point's
  ``__main__``."""
  app.run(main, argv=argv, flags_parser=parse_flags)


def check_output_dir(flag: str, path: str | None):
  """Raises unless ``path`` (given as ``flag``) is a directory or can be
  made one: not a file, nor under one."""
  if not path:
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
    raise NotADirectoryError(f"{flag}={path!r} is a file: pass a directory "
                             "(it is created if missing).")
  _check_parents(flag, path)


def check_export_dir(flag: str, path: str | None):
  """Raises unless ``path`` can receive a SavedModel: a new or empty folder,
  or one holding an earlier export (which the new one replaces whole; a
  folder of other files is not deleted for it)."""
  check_output_dir(flag, path)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if (path and tf.io.gfile.isdir(path) and tf.io.gfile.listdir(path) and
      not tf.io.gfile.exists(f"{path.rstrip('/')}/saved_model.pb")):
    raise FileExistsError(
        f"{flag}={path!r} holds files that are not a SavedModel: pass a new "
        "or empty folder, or an earlier export's, which is replaced.")


def check_output_file(flag: str, path: str | None):
  """Raises unless ``path`` (given as ``flag``) can be written as a file:
  not a directory, nor under a file (a missing folder is the writer's to
  create)."""
  if not path:
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tf.io.gfile.isdir(path):
    raise IsADirectoryError(f"{flag}={path!r} is a directory: name the "
                            "file to write.")
  _check_parents(flag, path)


def _check_parents(flag: str, path: str):
  """Local paths: the first existing folder above ``path`` must be a
  writable folder (remote ones, gs://..., are checked when written)."""
  if "://" in path:
    return
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise NotADirectoryError(f"{flag}={path!r} is under {parent!r}, which is "
                             "a file: choose another path.")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise PermissionError(f"{flag}={path!r}: {parent!r} is not writable "
                          "by this user: choose another path.")


def _program_name() -> str:
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  if spec is not None and spec.name:
    return "python -m " + spec.name.removesuffix(".__main__")
  if sys.argv and sys.argv[0].endswith(".py"):  # a script: bench/NAME.py
    return f"python {sys.argv[0]}"
  return sys.argv[0] if sys.argv else "evonorm"
