"""The search on a real two-node Ray cluster (both nodes on this machine),
one node killed mid-search: the search finishes and loses nothing.

The second node is killed while it holds a candidate (its worker is
suspended first, so the kill cannot miss it however fast other candidates
finish): Ray retries the task on the head (or, were its retries spent, the
controller re-queues it), and the log still ends with candidates 0..7.

The cluster is this test's own: its own ports, temp dirs and auth token. Its
processes are those `ray start` left in its process group, and their
descendants (Ray's workers lead groups of their own but are the raylet's
children); nothing is found by name and ``ray stop`` is never run, so Ray
instances of tests running in parallel are not touched.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from tests.test_search_run import TINY, _log, _search

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
MAX_CANDIDATES = 8

# Prints {node id: alive} as Ray's GCS sees the cluster; with
# a node id as argv[2], first waits (up to 60 s) until Ray marks it dead.
_NODES_SCRIPT = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.time() + 60
while True:
  nodes = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
  if len(sys.argv) < 3 or not nodes[sys.argv[2]] or time.time() > deadline:
    break
  time.sleep(0.5)
print("NODES=" + json.dumps(nodes))
"""


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  try:
    for s in sockets:
      s.bind(("", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def _tail(path, chars=3000):
  try:
    with open(path, errors="replace") as f:
      return f.read()[-chars:]
  except OSError:
    return ""


def _identity(process):
  try:
    return process.pid, process.create_time()
  except psutil.Error:
    return None


def _alive(process):
  try:
    return process.status() != psutil.STATUS_ZOMBIE
  except psutil.Error:
    return False


class _Node:
  """One ``ray start``: its own temp dir, log and process group."""

  def __init__(self, root, name, env, flags):
    self.temp_dir = os.path.join(root, name)
    self.log = os.path.join(root, name + ".log")
    os.makedirs(self.temp_dir)
    with open(self.log, "w") as log:
      proc = subprocess.Popen(
          [RAY, "start", "--num-cpus=1", f"--temp-dir={self.temp_dir}",
           "--disable-usage-stats", *flags],
          env=env, stdout=log, stderr=subprocess.STDOUT,
          stdin=subprocess.DEVNULL, start_new_session=True)
    self.pgid = proc.pid  # the daemons it leaves stay in its process group
    try:
      self.returncode = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
      proc.kill()
      self.returncode = proc.wait()
    # Its daemons, as left by `ray start`: group members then (pid and start
    # time, so a reused pid is not mistaken for one of them).
    self.founders = {_identity(p) for p in self._group()} - {None}

  def _group(self):
    found = set()
    for p in psutil.process_iter():
      try:
        if os.getpgid(p.pid) == self.pgid:
          found.add(p)
      except (OSError, psutil.Error):
        pass
    return found

  def processes(self, alive_only=False):
    """The node's processes: its daemons and their descendants (workers lead
    process groups of their own, but are children of the raylet)."""
    found = set()
    for p in self._group():
      try:
        if _identity(p) in self.founders:
          found.add(p)
          found.update(p.children(recursive=True))
      except psutil.Error:
        pass
    if alive_only:
      found = {p for p in found if _alive(p)}
    return found

  def kill(self):
    """SIGKILLs every process of the node at once (as a machine loss would),
    then waits until each is gone or a zombie (its parent, also killed, can't
    reap it; init will)."""
    procs = self.processes()
    for p in procs:
      try:
        p.kill()
      except psutil.Error:
        pass
    deadline = time.time() + 30
    while any(_alive(p) for p in procs) and time.time() < deadline:
      time.sleep(0.1)


def _nodes(address, env, wait_dead=None):
  result = subprocess.run(
      [sys.executable, "-c", _NODES_SCRIPT, address,
       *([wait_dead] if wait_dead else [])],
      env=env, capture_output=True, text=True, timeout=120, check=False)
  lines = [l for l in result.stdout.splitlines() if l.startswith("NODES=")]
  assert result.returncode == 0 and lines, result.stderr[-3000:]
  return json.loads(lines[0][len("NODES="):])


def _node_id(node):
  """The Ray node id of the node's raylet (from its command line)."""
  for p in node.processes():
    try:
      cmdline = p.cmdline()
    except psutil.Error:
      continue
    if cmdline and os.path.basename(cmdline[0]) == "raylet":
      for arg in cmdline:
        if arg.startswith("--node_id="):
          return arg.split("=", 1)[1]
  return None


def _hold_a_candidate(node):
  """Suspends the node's Ray worker that is evaluating a candidate, if any,
  so that candidate is still in flight on the node when the node dies (the
  node hangs, then is lost). Returns whether it did."""
  for p in node.processes():
    try:
      if p.cmdline()[:1] == ["ray::evaluate_in_worker"]:
        p.suspend()
        return True
    except (psutil.Error, IndexError):
      pass
  return False


@pytest.fixture
def cluster_root():
  # Short, so Ray's unix sockets under it stay within the path length limit.
  root = tempfile.mkdtemp(prefix="evray", dir="/tmp")
  nodes = []
  try:
    yield root, nodes
  finally:
    for node in nodes:
      node.kill()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.heavy
def test_search_on_a_cluster_survives_a_node_killed_midway(tmp_path,
                                                             cluster_root):
  root, nodes = cluster_root
  if not os.path.exists(RAY):
    pytest.skip(f"no ray CLI at {RAY}")
  assert "--workers=2" in TINY and not any(
      f.startswith(("--address", "--max_candidates", "--output_dir"))
      for f in TINY)
  # The cluster's own token: `ray start --head` turns token auth on when
  # ~/.ray/auth_token exists, and a node or driver given an explicit address
  # only uses a token with RAY_AUTH_MODE=token; this is the same everywhere.
  env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
  env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
  env.pop("EVONORM_SEARCH_CRASH_ONCE", None)

  for attempt in range(2):  # a second try, should a port be taken meanwhile
    port, client_port, dashboard_port, agent_1, agent_2 = _free_ports(5)
    head = _Node(root, f"head{attempt}", env, [
        "--head", f"--port={port}", "--include-dashboard=false",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={agent_1}"])
    nodes.append(head)
    address_file = os.path.join(head.temp_dir, "ray_current_cluster")
    if head.returncode == 0 and os.path.exists(address_file):
      break
    head.kill()
  else:
    pytest.skip("`ray start --head` cannot run here:\n" + _tail(head.log))
  with open(address_file) as f:
    address = f.read().strip()  # ip:port, the IP Ray bound the head to
  second = _Node(root, "second", env, [
      f"--address={address}", f"--dashboard-agent-listen-port={agent_2}"])
  nodes.append(second)
  assert second.returncode == 0, _tail(second.log)

  second_id = _node_id(second)
  before_search = _nodes(address, env)
  assert sorted(before_search.values()) == [True, True], before_search
  assert {_node_id(head), second_id} == set(before_search), before_search

  output_dir = str(tmp_path / "search")
  search_log = str(tmp_path / "search.log")
  with open(search_log, "w") as log:
    search = subprocess.Popen(
        _search(f"--output_dir={output_dir}", f"--address={address}",
                f"--max_candidates={MAX_CANDIDATES}",
                # No baseline phase (no baselines, a cold start): the held
                # candidate must be a search's.
                "--baselines=", "--seed_layers=", *TINY),
        env=env, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)
  try:
    # Kill the second node while it holds a candidate, once at least two
    # evaluations are logged. A node's first candidate takes seconds (its
    # worker imports TensorFlow and loads the data), so one is seen there;
    # suspending it keeps it in flight however fast the others go.
    held = False
    deadline = time.time() + 300
    while not (held and len(_log(output_dir)) >= 2):
      if search.poll() is not None:
        pytest.fail(f"the search exited before the kill (held={held}):\n"
                    + _tail(search_log))
      assert time.time() < deadline, (
          f"held={held}, {len(_log(output_dir))} evaluations in 300 s:\n"
          + _tail(search_log))
      held = held or _hold_a_candidate(second)
      time.sleep(0.1)
    before = _log(output_dir)  # all logged before the kill
    second.kill()
    assert not second.processes(alive_only=True)  # the node is gone
    assert 2 <= len(before) < MAX_CANDIDATES, len(before)

    returncode = search.wait(timeout=300)
  finally:
    if search.poll() is None:
      os.killpg(search.pid, signal.SIGKILL)
      search.wait()
  assert returncode == 0, _tail(search_log)

  after = _log(output_dir)
  assert after[:len(before)] == before  # logged work kept as it was
  records = [json.loads(line) for line in after]
  ids = [r["id"] for r in records]
  # Nothing lost: the candidate killed with the node was evaluated again
  # under its own id (a dropped one would have made room for id 8).
  assert sorted(ids) == list(range(MAX_CANDIDATES)), ids
  for r in records:
    assert r["status"] in ("accepted", "rejected"), r
    assert r["reason"] in (None, "nan", "stability", "quality"), r
  with open(os.path.join(output_dir, "state.json")) as f:
    assert json.load(f)["in_flight"] == []
  with open(os.path.join(output_dir, "report.md")) as f:
    assert f"Candidates evaluated: {MAX_CANDIDATES}" in f.read()

  # Ray saw the second node die; the head lived on.
  after_search = _nodes(address, env, wait_dead=second_id)
  assert after_search == {_node_id(head): True, second_id: False}, (
      after_search)
