"""The search controller: proposes candidates, farms them out on Ray, logs.

Asynchronous regularized evolution (Section 4.1): up to ``workers``
candidates are in flight; whenever any one finishes, it is logged, joins the
population if it passed the rejection protocols (the population is a sliding
window of the ``population`` most recent accepted layers), and a new child
is proposed from a tournament on the current population, so the controller
never waits for the slowest worker. Until the population is full, and
throughout with ``algorithm="random"`` (random search with rejection, the
paper's baseline), children are random layers.

Two caches avoid training a layer twice: candidates with a canonical graph
seen before, and candidates whose probe outputs match an evaluated one
(functional equivalence, as in AutoML-Zero), reuse the earlier result.

A worker that dies is retried by Ray (``max_retries``) and, if it keeps
failing, re-queued by the controller; after every event the controller's
state is checkpointed, so a killed search resumed from the same output
directory re-submits what was in flight and loses no finished evaluation.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Any

import numpy as np
import psutil

from evonorm_layers.search import evolution
from evonorm_layers.search import proxy_config
from evonorm_layers.search import proxy_data
from evonorm_layers.search import report
from evonorm_layers.search import store as store_lib
from evonorm_layers.search.graph import LayerGraph

ALGORITHMS = ("evolution", "random")
# Testing hook: "ID:PATH" makes the worker evaluating candidate ID exit
# abruptly once (PATH marks that it happened), to exercise recovery.
CRASH_ONCE_ENV = "EVONORM_SEARCH_CRASH_ONCE"
MAX_REQUEUES = 3
# The warm start evolution takes unless told otherwise, by search space
# (batch_independent): at laptop budgets a random initial population rarely
# fills (about 1 random layer in 90 passes every protocol).
DEFAULT_SEEDS = {False: ("bn_relu", "evonorm_b0"),
                 True: ("gn_relu", "evonorm_s0")}


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """What a search is; stored in its output directory."""

  algorithm: str = "evolution"
  criterion: str = "pareto"
  population: int = 20
  tournament: int = 5
  max_candidates: int = 200
  batch_independent: bool = False
  seed: int = 0
  seed_layers: tuple[str, ...] = ()  # as given (names or files)
  seed_graphs: tuple[str, ...] = ()  # their graphs, as JSON
  proxy: proxy_config.ProxyConfig = proxy_config.ProxyConfig()

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f"algorithm must be one of {ALGORITHMS}; received "
                       f"{self.algorithm!r}.")
    if self.criterion not in evolution.CRITERIA:
      raise ValueError(f"criterion must be one of {evolution.CRITERIA}; "
                       f"received {self.criterion!r}.")
    for name in ("population", "tournament", "max_candidates"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be at least 1; received "
                         f"{getattr(self, name)}.")
    if self.tournament > self.population:
      raise ValueError(f"tournament ({self.tournament}) cannot exceed "
                       f"population ({self.population}).")
    if self.seed_graphs and self.algorithm != "evolution":
      raise ValueError("--seed_layers start an evolution's population; "
                       "random search draws every layer at random. Drop "
                       "--seed_layers or use --algorithm=evolution.")

  def to_dict(self) -> dict:
    data = dataclasses.asdict(self)
    data["proxy"] = self.proxy.to_dict()
    return data

  @classmethod
  def from_dict(cls, data: dict) -> "SearchConfig":
    data = dict(data)
    data["proxy"] = proxy_config.ProxyConfig.from_dict(data.get("proxy", {}))
    for name in ("seed_layers", "seed_graphs"):
      data[name] = tuple(data.get(name, ()))
    return cls(**data)


def resolve_seed_layers(names) -> dict[str, LayerGraph]:
  """Graphs of ``--seed_layers`` entries: the paper's layers by name
  (``known_layers``), searched layers registered by name, or the path of a
  ``best_layers.json`` (all its layers)."""
  from evonorm_layers import registry  # pylint: disable=g-import-not-at-top
  from evonorm_layers.search import known_layers  # pylint: disable=g-import-not-at-top
  from evonorm_layers.search import layer as layer_lib  # pylint: disable=g-import-not-at-top
  graphs = {}
  for name in names:
    if name in known_layers.KNOWN_GRAPHS:
      graphs[name] = known_layers.KNOWN_GRAPHS[name]
    elif name.endswith(".json"):
      if not os.path.exists(name):
        raise FileNotFoundError(f"--seed_layers: no file {name!r} (a "
                                "search's best_layers.json).")
      for found in layer_lib.load_searched_layers(name):
        graphs[found] = registry.get_norm_activation_constructor(found).graph
    else:
      try:
        constructor = registry.get_norm_activation_constructor(name)
      except ValueError:
        constructor = None
      if not isinstance(constructor, layer_lib.SearchedLayerConstructor):
        raise ValueError(
            f"--seed_layers: {name!r} is not a layer of the search space: "
            f"use one of {sorted(known_layers.KNOWN_GRAPHS)}, a searched "
            "layer's name, or a best_layers.json file.")
      graphs[name] = constructor.graph
  return graphs


# -- the worker side ---------------------------------------------------------

# Per worker process and proxy: the data and the built, traced anchors.
_WORKER_DATA: dict[str, proxy_data.ProxyData] = {}
_WORKER_SESSIONS: dict[str, dict] = {}


def evaluate_in_worker(candidate: dict, proxy: dict,
                       known_probes: list[str],
                       placement_class=None) -> dict:
  """Runs in a Ray worker: one candidate's protocols and training
  (``placement_class``: an ``evaluation.Placement`` subclass; None: it)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from evonorm_layers.search import evaluation  # pylint: disable=g-import-not-at-top
  if not _WORKER_DATA:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
  crash = os.environ.get(CRASH_ONCE_ENV, "")
  if crash:
    crash_id, marker = crash.split(":", 1)
    if int(crash_id) == candidate["id"] and not os.path.exists(marker):
      open(marker, "w").close()
      os._exit(1)  # pylint: disable=protected-access
  config = proxy_config.ProxyConfig.from_dict(proxy)
  key = repr(sorted(proxy.items()))
  if key not in _WORKER_DATA:
    _WORKER_DATA[key] = proxy_data.load_data(config)
  record = evaluation.evaluate(LayerGraph.from_dict(candidate["graph"]),
                               config, _WORKER_DATA[key],
                               known_probes=set(known_probes),
                               sessions=_WORKER_SESSIONS.setdefault(key, {}),
                               placement_class=(placement_class or
                                                evaluation.Placement))
  record["worker"] = f"{os.uname().nodename}:{os.getpid()}"
  record["worker_rss_mib"] = resident_mib()
  return record


def resident_mib() -> float:
  """This process's resident memory in MiB."""
  return psutil.Process().memory_info().rss / 2**20


class RayEvaluator:
  """Submits candidates as Ray tasks (one CPU each) and collects them."""

  def __init__(self, workers: int, address: str | None = None,
               placement_class=None, max_calls: int = 0):
    """``placement_class``: where a candidate's stages run (an
    ``evaluation.Placement`` subclass; None: the search's); ``max_calls``:
    a worker process exits after this many evaluations and Ray starts a
    fresh one (0: never). A worker keeps ~3.6 MiB of every
    model compiled for a candidate
    (``tensorflow_hygiene.forget_custom_gradients`` frees the rest), so a
    long search can bound its workers' memory this way, each restart
    costing one setup (data, anchors)."""
    import ray  # pylint: disable=g-import-not-at-top
    self.placement_class = placement_class
    self.ray = ray
    env = {"TF_CPP_MIN_LOG_LEVEL": "2"}
    if CRASH_ONCE_ENV in os.environ:
      env[CRASH_ONCE_ENV] = os.environ[CRASH_ONCE_ENV]
    if not ray.is_initialized():
      if address:
        ray.init(address=address, runtime_env={"env_vars": env},
                 log_to_driver=False)
      else:
        ray.init(num_cpus=workers, include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=False)
    self.remote = ray.remote(num_cpus=1, max_retries=2,
                             max_calls=max_calls)(evaluate_in_worker)

  def submit(self, candidate, proxy, known_probes):
    return self.remote.remote(candidate, proxy, sorted(known_probes),
                              self.placement_class)

  def wait_one(self, refs):
    ready, _ = self.ray.wait(list(refs), num_returns=1)
    return ready[0]

  def result(self, ref) -> dict:
    """The record; raises ``WorkerLost`` if the worker died every retry."""
    try:
      return self.ray.get(ref)
    except (self.ray.exceptions.WorkerCrashedError,
            self.ray.exceptions.NodeDiedError,
            self.ray.exceptions.ObjectLostError) as e:
      raise WorkerLost(str(e)) from e

  def shutdown(self):
    self.ray.shutdown()


class _NoBar:
  """What the loop calls on a progress bar, doing nothing."""
  total = 0

  def update(self, n):
    pass

  def set_postfix(self, **kwargs):
    pass

  def refresh(self):
    pass


class WorkerLost(RuntimeError):
  """The worker evaluating a candidate died (after Ray's retries)."""


# -- the controller ------------------------------------------------------------

class Search:
  """One search run over a ``SearchStore``; see the module docstring."""

  def __init__(self, config: SearchConfig, store: store_lib.SearchStore,
               evaluator, workers: int, bar=None):
    """``bar``: a tqdm progress bar to advance by one per logged candidate
    (the caller's, covering more than this loop), or None."""
    self.config, self.store, self.evaluator = config, store, evaluator
    self.workers = workers
    self.bar = bar
    self.records = store.records()
    self.population = collections.deque(
        store_lib.accepted(self.records), maxlen=config.population)
    self.by_fingerprint = {r["fingerprint"]: r for r in self.records}
    self.by_probe = {r["probe"]: r for r in self.records if r.get("probe")}
    state = store.load_state() or {}
    self.rng = np.random.default_rng(config.seed)
    if "rng" in state:
      self.rng.bit_generator.state = state["rng"]
    logged = {r["id"] for r in self.records}
    self.next_id = max([state.get("next_id", 0)] +
                       [r["id"] + 1 for r in self.records])
    # Candidates in flight when the last run stopped are evaluated first.
    self.pending = collections.deque(
        c for c in state.get("in_flight", []) if c["id"] not in logged)
    self.in_flight: dict[Any, dict] = {}

  # -- proposing -------------------------------------------------------------

  def _propose(self) -> dict:
    if self.pending:
      return self.pending.popleft()
    cfg = self.config
    parent = None
    seeds = [LayerGraph.from_json(g) for g in cfg.seed_graphs]
    if seeds and self.next_id < len(seeds):
      # A warm start: the seed layers themselves first...
      return self._candidate(seeds[self.next_id], "seed", None)
    if seeds and len(self.population) < cfg.population:
      # ...then their mutations fill the initial population.
      graph = evolution.mutate(seeds[int(self.rng.integers(len(seeds)))],
                               self.rng,
                               batch_independent=cfg.batch_independent)
      return self._candidate(graph, "seed_mutation", None)
    if cfg.algorithm == "evolution" and len(self.population) >= (
        cfg.population):
      parent = evolution.select_parent(list(self.population), cfg.tournament,
                                       cfg.criterion, self.rng)
      graph = evolution.mutate(LayerGraph.from_dict(parent["graph"]),
                               self.rng,
                               batch_independent=cfg.batch_independent)
    else:
      graph = evolution.random_graph(self.rng,
                                     batch_independent=cfg.batch_independent)
    return self._candidate(graph, "mutation" if parent else "random",
                           parent["id"] if parent else None)

  def _candidate(self, graph: LayerGraph, origin: str, parent):
    candidate = {"id": self.next_id, "graph": graph.to_dict(),
                 "origin": origin, "parent": parent, "requeues": 0}
    self.next_id += 1
    return candidate

  # -- bookkeeping -------------------------------------------------------------

  def _checkpoint(self):
    self.store.save_state({
        "rng": self.rng.bit_generator.state,
        "next_id": self.next_id,
        "in_flight": list(self.in_flight.values()) + list(self.pending),
    })

  def _finish(self, candidate: dict, result: dict,
              cached_from: dict | None = None):
    graph = LayerGraph.from_dict(candidate["graph"])
    if cached_from is not None:
      result = {k: cached_from[k] for k in (
          "status", "reason", "fitness", "quality", "stability", "probe",
          "rejection") if k in cached_from}
      result.update(cached_from=cached_from["id"], seconds={"total": 0.0})
    record = {**result, "id": candidate["id"], "graph": candidate["graph"],
              "formula": graph.formula(), "fingerprint": graph.fingerprint(),
              "origin": candidate["origin"], "parent": candidate["parent"],
              "requeues": candidate["requeues"], "finished_at": time.time()}
    self.store.append(record)
    self.records.append(record)
    self.by_fingerprint.setdefault(record["fingerprint"], record)
    if record.get("probe"):
      self.by_probe.setdefault(record["probe"], record)
    if record["status"] == "accepted":
      self.population.append(record)
    return record

  def _submit(self, candidate: dict) -> dict | None:
    """Submits, or finishes at once from the graph cache (returns record)."""
    fingerprint = LayerGraph.from_dict(candidate["graph"]).fingerprint()
    if fingerprint in self.by_fingerprint:
      return self._finish(candidate, {}, self.by_fingerprint[fingerprint])
    ref = self.evaluator.submit(candidate, self.config.proxy.to_dict(),
                                self.by_probe.keys())
    self.in_flight[ref] = candidate
    return None

  # -- the loop ----------------------------------------------------------------

  def run(self, max_seconds: float | None = None) -> list[dict]:
    """Runs until ``max_candidates`` evaluations are logged, or until
    ``max_seconds`` have passed (then the candidates in flight finish; a
    resumed search goes on from there)."""
    target = self.config.max_candidates
    deadline = None if max_seconds is None else time.time() + max_seconds
    bar = self.bar if self.bar is not None else _NoBar()
    submitted = len(self.records)
    while len(self.records) < target:
      out_of_time = deadline is not None and time.time() > deadline
      if out_of_time and not self.in_flight:
        break
      while (not out_of_time and len(self.in_flight) < self.workers and
             submitted + len(self.in_flight) < target):
        candidate = self._propose()
        if self._submit(candidate) is not None:
          submitted += 1
          bar.update(1)
        self._checkpoint()
      if not self.in_flight:
        continue
      ref = self.evaluator.wait_one(self.in_flight)
      candidate = self.in_flight.pop(ref)
      try:
        result = self.evaluator.result(ref)
      except WorkerLost as e:
        candidate["requeues"] += 1
        if candidate["requeues"] <= MAX_REQUEUES:
          self.pending.appendleft(candidate)
        else:
          self._finish(candidate, {"status": "rejected", "reason": "error",
                                   "rejection": {"error": str(e)[:300]}})
          submitted += 1
          bar.update(1)
        self._checkpoint()
        continue
      if result.get("status") == "cached":
        self._finish(candidate, {}, cached_from=self.by_probe[result["probe"]])
      else:
        self._finish(candidate, result)
      submitted += 1
      bar.update(1)
      self._set_postfix(bar)
      self._checkpoint()
    if len(self.records) < target:  # out of time: the bar ends here
      bar.total -= target - len(self.records)
      bar.refresh()
    return self.records

  def _set_postfix(self, bar):
    accepted = store_lib.accepted(self.records)
    finds = report.found(self.records)
    best = max((evolution.average_fitness(r) for r in finds), default=None)
    bar.set_postfix(accepted=len(accepted),
                    rejected=len(self.records) - len(accepted),
                    best_found="-" if best is None else f"{best:.3f}")
