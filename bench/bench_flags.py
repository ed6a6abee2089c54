"""What every benchmark checks before any work, and how it reports it.

A benchmark runs for minutes to hours; a misspelled layer or an output path
that cannot be written must stop it at once, as one line
(``python bench/NAME.py: error: ...``, exit status 2), like the project's
other programs, not as a traceback after the work or a wall of flag help.
"""

from __future__ import annotations

import contextlib

from absl import flags

# Flags that name where results go, in the benchmarks that have them.
_OUTPUT_DIRS = ("output_dir", "work_dir")
_OUTPUT_FILES = ("json_output",)


@contextlib.contextmanager
def checked(layer_flags: tuple[str, ...] = ()):
  """A scope in which bad input is one line: the output paths of the
  benchmark's flags and the registered layer names of ``layer_flags`` are
  checked on entry; the benchmark's own checks go inside."""
  from evonorm_model_garden import cli  # pylint: disable=g-import-not-at-top
  import evonorm_layers  # pylint: disable=g-import-not-at-top
  given = flags.FLAGS
  with cli.user_errors():
    for name in _OUTPUT_DIRS:
      if name in given:
        cli.check_output_dir(f"--{name}", given[name].value)
    for name in _OUTPUT_FILES:
      if name in given:
        cli.check_output_file(f"--{name}", given[name].value)
    for name in layer_flags:
      for layer in given[name].value or ():
        evonorm_layers.registry.resolve_name(layer)
    yield


def run(main):
  """The benchmark's ``__main__``: absl's ``app.run`` with flag errors as
  one line."""
  from evonorm_model_garden import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
