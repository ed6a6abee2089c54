"""A search's output directory survives kills: a torn last record is
dropped before anything is appended, a damaged record is named, and a second
search started on the directory of a running one stops in one line."""

import json
import subprocess
import sys
import time

import pytest

from evonorm_layers.search import store as store_lib


def _write_log(path, lines: str):
  (path / store_lib.LOG).write_text(lines)


def test_torn_last_record_is_dropped_before_appending(tmp_path):
  store = store_lib.SearchStore(str(tmp_path))
  store.create({"seed": 0})
  _write_log(tmp_path, '{"id": 0}\n{"id": 1}\n{"id": 2, "stat')
  assert [r["id"] for r in store.records()] == [0, 1]  # torn one ignored
  assert store.open_existing() == {"seed": 0}
  assert (tmp_path / store_lib.LOG).read_text() == '{"id": 0}\n{"id": 1}\n'
  store.append({"id": 2})
  assert [r["id"] for r in store.records()] == [0, 1, 2]
  assert not store.drop_torn_record()  # nothing left to cut


def test_damaged_record_is_an_error_naming_its_line(tmp_path):
  store = store_lib.SearchStore(str(tmp_path))
  store.create({})
  _write_log(tmp_path, '{"id": 0}\nnot json\n{"id": 2}\n')
  with pytest.raises(ValueError, match=r"evaluations.jsonl, line 2, is not a "
                     r"JSON record .*remove that line"):
    store.records()


def test_second_search_on_a_directory_in_use_stops(tmp_path):
  """The lock is the operating system's: held while the first search's
  process lives, released when it ends (here killed)."""
  (tmp_path / "first").mkdir()  # a search's directory, its lock not held here
  (tmp_path / "first" / store_lib.CONFIG).write_text(json.dumps({}))
  first = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time; from evonorm_layers.search import store; "
       "store.SearchStore(sys.argv[1]).open_existing(); print('locked', "
       "flush=True); time.sleep(600)", str(tmp_path / "first")],
      stdout=subprocess.PIPE, text=True)
  try:
    assert first.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError, match=r"--output_dir='.*first' is in use "
                       rf"by another search \(process {first.pid}\)"):
      store_lib.SearchStore(str(tmp_path / "first")).open_existing()
  finally:
    first.kill()
    first.wait()
  time.sleep(0.1)
  assert store_lib.SearchStore(str(tmp_path / "first")).open_existing() == {}


def test_json_files_are_replaced_whole(tmp_path):
  """best_layers.json, state.json, calibration rows: what a killed write
  leaves (a partial temporary file) is never read, and the next write
  replaces the file whole."""
  path = tmp_path / "best_layers.json"
  path.write_text(json.dumps({"searched_old": {}}))
  (tmp_path / "best_layers.json.tmp").write_text('{"searched_ne')
  assert json.loads(path.read_text()) == {"searched_old": {}}
  store_lib.write_json_atomic(str(path), {"searched_new": {"nodes": []}})
  assert json.loads(path.read_text()) == {"searched_new": {"nodes": []}}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["best_layers.json"]
