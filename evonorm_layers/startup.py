"""Quiet start-up for the project's programs.

Run as a program (``python -m evonorm_vision.train``, ``python -m
evonorm_layers.search``, ...), the project keeps TensorFlow's C++ start-up
lines (CUDA not found, oneDNN notices, the CPU feature guard) off the
terminal, so that the first thing a user reads is the program's own output.
``--verbose`` on the command line, or ``EVONORM_VERBOSE=1``, keeps them, and
makes bad-input errors show their traceback (for bug reports). A
``TF_CPP_MIN_LOG_LEVEL`` already set is left as it is. Imported as a
library, nothing is changed.

This module imports nothing heavy: it must run before TensorFlow is
imported.
"""

from __future__ import annotations

import os
import sys

VERBOSE_ENV = "EVONORM_VERBOSE"


def verbose() -> bool:
  """Whether the user asked for TensorFlow's logs and tracebacks."""
  return ("--verbose" in sys.argv or
          os.environ.get(VERBOSE_ENV, "").strip().lower() not in (
              "", "0", "false", "no"))


def quiet_when_run_as_program():
  """Hides TensorFlow's C++ logs when a module of the project is being run
  with ``python -m`` (Python sets ``sys.argv[0]`` to ``-m`` while it
  imports the module's packages) and the user did not ask for them."""
  if sys.argv[:1] == ["-m"] and not verbose():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
