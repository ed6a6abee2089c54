"""Random layers, mutation, and regularized evolution's selection step.

Random generation (Section 3): nodes are appended one at a time, each a
uniformly drawn primitive whose inputs are drawn uniformly among the nodes
before it; the last node is the output. Mutation (Section 4.1): pick an
intermediate node uniformly, replace its op uniformly, redraw its inputs
uniformly among earlier nodes. Selection: a tournament over a random sample
of the population (a sliding window of the most recent accepted members),
won by the best average fitness or by a uniformly drawn member of the sample's
Pareto front (the paper's choice).

Every function takes an explicit ``numpy.random.Generator``: a seeded search
is reproducible and its state can be checkpointed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from evonorm_layers.search import primitives
from evonorm_layers.search.graph import INITIAL_NODES
from evonorm_layers.search.graph import LayerGraph
from evonorm_layers.search.graph import MAX_INTERMEDIATE_NODES
from evonorm_layers.search.graph import Node

CRITERIA = ("pareto", "average")


def _random_node(rng: np.random.Generator, index: int,
                 ops: Sequence[str]) -> Node:
  op = ops[rng.integers(len(ops))]
  arity = primitives.get(op).arity
  return Node(op, tuple(int(i) for i in rng.integers(0, index, size=arity)))


def random_graph(rng: np.random.Generator, *, batch_independent: bool = False,
                 max_nodes: int = MAX_INTERMEDIATE_NODES) -> LayerGraph:
  """A random layer with 1 to ``max_nodes`` intermediate nodes."""
  ops = primitives.op_names(batch_independent)
  count = int(rng.integers(1, max_nodes + 1))
  return LayerGraph(tuple(_random_node(rng, len(INITIAL_NODES) + i, ops)
                          for i in range(count)))


def mutate(graph: LayerGraph, rng: np.random.Generator, *,
           batch_independent: bool = False, max_tries: int = 100
           ) -> LayerGraph:
  """The paper's mutation, redrawn until the layer's function changes.

  A mutation of a node the output does not use, or one that redraws the same
  op and inputs, leaves the canonical graph unchanged; such children are
  redrawn (up to ``max_tries``) so that every evaluation is of a new layer.
  """
  ops = primitives.op_names(batch_independent)
  parent = graph.fingerprint()
  child = graph
  for _ in range(max_tries):
    position = int(rng.integers(len(graph.nodes)))
    nodes = list(graph.nodes)
    nodes[position] = _random_node(rng, len(INITIAL_NODES) + position, ops)
    child = LayerGraph(tuple(nodes))
    if child.fingerprint() != parent:
      break
  return child


def pareto_front(members: Sequence[Mapping]) -> list[Mapping]:
  """Members not dominated by another (``fitness``: anchor -> accuracy)."""
  def dominates(a, b):
    keys = a["fitness"].keys()
    return (all(a["fitness"][k] >= b["fitness"][k] for k in keys) and
            any(a["fitness"][k] > b["fitness"][k] for k in keys))
  return [m for m in members
          if not any(dominates(o, m) for o in members if o is not m)]


def average_fitness(member: Mapping) -> float:
  return float(np.mean(list(member["fitness"].values())))


def select_parent(population: Sequence[Mapping], tournament: int,
                  criterion: str, rng: np.random.Generator) -> Mapping:
  """Tournament selection over ``tournament`` random members."""
  if criterion not in CRITERIA:
    raise ValueError(f"criterion must be one of {CRITERIA}; received "
                     f"{criterion!r}.")
  size = min(tournament, len(population))
  sample = [population[i] for i in rng.choice(len(population), size,
                                              replace=False)]
  if criterion == "average":
    return max(sample, key=average_fitness)
  front = pareto_front(sample)
  return front[int(rng.integers(len(front)))]
