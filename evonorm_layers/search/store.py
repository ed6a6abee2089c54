"""A search's output directory: its config, log and controller checkpoint.

* ``config.json``: the search and proxy settings (a resumed search reuses
  them);
* ``evaluations.jsonl``: one JSON line per finished evaluation, appended and
  flushed to disk as each completes, so a killed search loses no finished
  evaluation;
* ``state.json``: the controller's checkpoint (random-generator state, next
  candidate id, candidates in flight), replaced atomically;
* ``lock``: held (``flock``) by the search running in the directory, so
  that a second search started there stops with one line instead of
  interleaving its records with the first's.

A kill while a record is being written leaves its last line cut short;
resuming drops that line with a warning (its evaluation is redone) before
anything is appended.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any, Iterable

from absl import logging

CONFIG = "config.json"
LOG = "evaluations.jsonl"
STATE = "state.json"
LOCK = "lock"

# Locks this process holds, by directory (a second SearchStore of the same
# directory in this process shares the lock instead of failing on it).
_held_locks: dict[str, Any] = {}


class SearchStore:
  """Reads and writes one search's output directory."""

  def __init__(self, output_dir: str):
    self.output_dir = os.path.abspath(os.path.expanduser(output_dir))

  def path(self, name: str) -> str:
    return os.path.join(self.output_dir, name)

  # -- opening -----------------------------------------------------------------

  def exists(self) -> bool:
    return os.path.exists(self.path(CONFIG))

  def create(self, config: dict):
    """Starts a new search; errors if the directory holds one or cannot be
    written (one that is a file: ``cli.check_output_dir``, before)."""
    if self.exists():
      count = len(self.records())
      raise ValueError(
          f"--output_dir={self.output_dir!r} already holds a search "
          f"({count} evaluations). Pass --resume to continue it, or choose a "
          "new --output_dir.")
    try:
      os.makedirs(self.output_dir, exist_ok=True)
      self.lock()
      self._write_atomic(CONFIG, config)
    except OSError as e:
      raise ValueError(f"Cannot write to --output_dir={self.output_dir!r}: "
                       f"{e.strerror}. Choose a writable directory.") from e

  def open_existing(self) -> dict:
    """The config of the search to resume (its directory locked, a torn
    last record dropped); errors if there is none."""
    if not self.exists():
      raise ValueError(f"--resume: {self.output_dir!r} holds no search "
                       f"(no {CONFIG}). Start one without --resume.")
    self.lock()
    self.drop_torn_record()
    with open(self.path(CONFIG)) as f:
      return json.load(f)

  def lock(self):
    """Takes the directory's lock for this process's lifetime (the system
    releases it when the process ends, killed or not); raises if another
    search holds it."""
    if self.output_dir in _held_locks:
      return
    handle = open(self.path(LOCK), "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      owner = handle.read().strip() or "another process"
      handle.close()
      raise ValueError(
          f"--output_dir={self.output_dir!r} is in use by another search "
          f"({owner}). Wait for it to finish (or stop it), or choose another "
          "--output_dir.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    _held_locks[self.output_dir] = handle

  def drop_torn_record(self) -> bool:
    """Cuts a last record left incomplete by a kill (no final newline), so
    that the next record starts on a line of its own; returns whether one
    was cut."""
    path = self.path(LOG)
    if not os.path.exists(path):
      return False
    with open(path, "rb+") as f:
      data = f.read()
      if not data or data.endswith(b"\n"):
        return False
      keep = data.rfind(b"\n") + 1
      f.truncate(keep)
    logging.warning("%s: its last record was cut short by a kill (%d bytes);"
                    " dropped, its evaluation will be redone.", path,
                    len(data) - keep)
    return True

  def update_config(self, config: dict):
    """Replaces the stored config (e.g. a resumed search's new budget)."""
    self._write_atomic(CONFIG, config)

  # -- log -----------------------------------------------------------------------

  def append(self, record: dict):
    with open(self.path(LOG), "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def records(self) -> list[dict]:
    """Every finished evaluation, in completion order.

    A last line cut short by a kill is ignored (its evaluation is redone);
    a damaged line before it is an error naming it.
    """
    if not os.path.exists(self.path(LOG)):
      return []
    records = []
    with open(self.path(LOG)) as f:
      for number, line in enumerate(f, 1):
        if not line.endswith("\n"):
          break  # torn by a kill: see drop_torn_record
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as error:
          raise ValueError(
              f"{self.path(LOG)}, line {number}, is not a JSON record "
              f"({error.msg}): the log was edited or damaged; remove that "
              "line (its evaluation is then redone) and resume.") from None
    return records

  # -- controller checkpoint ---------------------------------------------------

  def save_state(self, state: dict):
    self._write_atomic(STATE, state)

  def load_state(self) -> dict | None:
    if not os.path.exists(self.path(STATE)):
      return None
    with open(self.path(STATE)) as f:
      return json.load(f)

  def _write_atomic(self, name: str, data: Any):
    write_json_atomic(self.path(name), data, sort_keys=True)


def write_json_atomic(path: str, data: Any, **dump_options):
  """Writes ``data`` as JSON to a temporary file and renames it to ``path``:
  a job killed while writing leaves the previous file (or none), never a
  truncated one."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1, **dump_options)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def accepted(records: Iterable[dict]) -> list[dict]:
  return [r for r in records if r.get("status") == "accepted"]
