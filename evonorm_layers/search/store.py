"""A search's output directory: its config, log and controller checkpoint.

* ``config.json``: the search and proxy settings (a resumed search reuses
  them);
* ``evaluations.jsonl``: one JSON line per finished evaluation, appended and
  flushed to disk as each completes, so a killed search loses no finished
  evaluation;
* ``state.json``: the controller's checkpoint (random-generator state, next
  candidate id, candidates in flight), replaced atomically.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

CONFIG = "config.json"
LOG = "evaluations.jsonl"
STATE = "state.json"


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
    """Starts a new search; errors if the directory holds one or is unusable."""
    if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
      raise ValueError(f"--output_dir={self.output_dir!r} is a file, not a "
                       "directory. Choose a directory path.")
    if self.exists():
      count = len(self.records())
      raise ValueError(
          f"--output_dir={self.output_dir!r} already holds a search "
          f"({count} evaluations). Pass --resume to continue it, or choose a "
          "new --output_dir.")
    try:
      os.makedirs(self.output_dir, exist_ok=True)
      self._write_atomic(CONFIG, config)
    except OSError as e:
      raise ValueError(f"Cannot write to --output_dir={self.output_dir!r}: "
                       f"{e.strerror}. Choose a writable directory.") from e

  def open_existing(self) -> dict:
    """The config of the search to resume; errors if there is none."""
    if not self.exists():
      raise ValueError(f"--resume: {self.output_dir!r} holds no search "
                       f"(no {CONFIG}). Start one without --resume.")
    with open(self.path(CONFIG)) as f:
      return json.load(f)

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

    A last line cut short by a kill is ignored (its evaluation is redone).
    """
    if not os.path.exists(self.path(LOG)):
      return []
    records = []
    with open(self.path(LOG)) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          break
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
    tmp = self.path(name + ".tmp")
    with open(tmp, "w") as f:
      json.dump(data, f, indent=1, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path(name))


def accepted(records: Iterable[dict]) -> list[dict]:
  return [r for r in records if r.get("status") == "accepted"]
