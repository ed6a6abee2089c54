"""What the project's command-line entry points share.

Bad input (an unknown experiment or layer, a missing dataset or file, flags
that contradict each other) is reported as one line on stderr, with exit
status 2, before any work starts: no traceback and no page of flag help.
Entry points check their input inside :func:`user_errors`; errors raised
later, during the work itself, keep their tracebacks.
"""

from __future__ import annotations

import contextlib
import sys

from absl import app

# The errors the project raises for bad input, each with a message that says
# what was wrong and how to fix it.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError,
               NotADirectoryError, IsADirectoryError, app.UsageError)


@contextlib.contextmanager
def user_errors(program: str | None = None):
  """Turns bad-input errors raised inside into one line and exit status 2."""
  try:
    yield
  except USER_ERRORS as error:
    name = program or _program_name()
    message = " ".join(str(error).split("\n"))
    print(f"{name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _program_name() -> str:
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  if spec is not None and spec.name:
    return "python -m " + spec.name.removesuffix(".__main__")
  return sys.argv[0] if sys.argv else "evonorm"
