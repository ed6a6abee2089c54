"""Layers as computation graphs over primitive ops (Section 3 of the paper).

A graph has 4 initial nodes, ``x`` (the input), ``zero`` (a constant), and
the per-channel variables ``v0`` (zeros) and ``v1`` (ones), then up to 10
intermediate nodes; each applies one primitive to earlier nodes, and the last
node is the output. The per-channel affine ``* gamma + beta`` follows the
graph (it is not part of it).

``LayerGraph`` is immutable and hashable. ``canonical()`` drops nodes the
output does not use, merges duplicate nodes and orders the operands of
commutative ops, so that equal layers have the same :meth:`fingerprint`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence

import numpy as np

from evonorm_layers.search import primitives

INITIAL_NODES = ("x", "zero", "v0", "v1")
MAX_INTERMEDIATE_NODES = 10
_LATEX_INITIAL = {"x": "x", "zero": "0", "v0": "v_0", "v1": "v_1"}


@dataclasses.dataclass(frozen=True)
class Node:
  op: str
  inputs: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LayerGraph:
  """A candidate layer. Node ``i`` (``i >= 4``) is ``nodes[i - 4]``."""

  nodes: tuple[Node, ...]

  def __post_init__(self):
    self.validate()

  # -- structure -------------------------------------------------------------

  def validate(self):
    if not self.nodes:
      raise ValueError("A layer graph needs at least one intermediate node.")
    if len(self.nodes) > MAX_INTERMEDIATE_NODES:
      raise ValueError(f"A layer graph has at most {MAX_INTERMEDIATE_NODES} "
                       f"intermediate nodes; got {len(self.nodes)}.")
    for i, node in enumerate(self.nodes):
      index = i + len(INITIAL_NODES)
      primitive = primitives.get(node.op)
      if len(node.inputs) != primitive.arity:
        raise ValueError(f"Node {index} ({node.op}) takes {primitive.arity} "
                         f"inputs; got {list(node.inputs)}.")
      for j in node.inputs:
        if not isinstance(j, (int, np.integer)) or not 0 <= j < index:
          raise ValueError(f"Node {index} ({node.op}) must read earlier nodes "
                           f"(0..{index - 1}); got input {j}.")

  @property
  def output(self) -> int:
    return len(INITIAL_NODES) + len(self.nodes) - 1

  def node(self, index: int) -> Node:
    return self.nodes[index - len(INITIAL_NODES)]

  def used_nodes(self) -> set[int]:
    """Indices of the nodes the output depends on (itself included)."""
    return self.ancestors(self.output)

  def ancestors(self, index: int) -> set[int]:
    """Indices of the nodes ``index`` depends on (itself included)."""
    used, stack = set(), [index]
    while stack:
      index = stack.pop()
      if index in used:
        continue
      used.add(index)
      if index >= len(INITIAL_NODES):
        stack.extend(self.node(index).inputs)
    return used

  @property
  def uses_batch_statistics(self) -> bool:
    return any(primitives.get(self.node(i).op).uses_batch
               for i in self.used_nodes() if i >= len(INITIAL_NODES))

  def uses(self, initial: str) -> bool:
    return INITIAL_NODES.index(initial) in self.used_nodes()

  @property
  def normalizes(self) -> bool:
    """Whether a statistic of ``x`` (an aggregation of a node that depends
    on ``x``) reaches the output; without one the graph is an activation
    function applied element by element, not a normalization."""
    x = INITIAL_NODES.index("x")
    return any(
        primitives.get(self.node(i).op).is_aggregation and
        x in self.ancestors(i)
        for i in self.used_nodes() if i >= len(INITIAL_NODES))

  def canonical(self) -> "LayerGraph":
    """Unused nodes dropped, duplicates merged, commutative operands sorted."""
    used = self.used_nodes()
    remap = {i: i for i in range(len(INITIAL_NODES))}
    seen: dict[Node, int] = {}
    nodes: list[Node] = []
    for index in range(len(INITIAL_NODES), self.output + 1):
      if index not in used:
        continue
      node = self.node(index)
      inputs = tuple(remap[j] for j in node.inputs)
      if primitives.get(node.op).commutative:
        inputs = tuple(sorted(inputs))
      key = Node(node.op, inputs)
      if key in seen:
        remap[index] = seen[key]
        continue
      nodes.append(key)
      remap[index] = len(INITIAL_NODES) + len(nodes) - 1
      seen[key] = remap[index]
    return LayerGraph(tuple(nodes))

  def fingerprint(self) -> str:
    """A hash of the canonical graph: equal for graphs computing the same."""
    canonical = json.dumps(self.canonical().to_dict(), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]

  # -- serialization ---------------------------------------------------------

  def to_dict(self) -> dict:
    return {"nodes": [[n.op, list(n.inputs)] for n in self.nodes]}

  @classmethod
  def from_dict(cls, data: dict) -> "LayerGraph":
    """The graph of ``{"nodes": [[op, [input, ...]], ...]}``.

    Nothing is coerced: an op must be a string and an input an int, so a
    corrupted or hand-edited file is an error, not another layer.
    """
    form = "A layer graph is a dict {'nodes': [[op, [input, ...]], ...]}"
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
      raise ValueError(f"{form}; received {data!r}.")
    nodes = []
    for position, entry in enumerate(data["nodes"]):
      where = f"node {len(INITIAL_NODES) + position} ({entry!r})"
      if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and
              isinstance(entry[1], (list, tuple))):
        raise ValueError(f"{form}; {where} is not [op, [input, ...]].")
      op, inputs = entry
      if not isinstance(op, str):
        raise ValueError(f"{form}; {where}: the op must be a string such as "
                         f"'add', not {op!r}.")
      bad = [i for i in inputs
             if isinstance(i, bool) or not isinstance(i, (int, np.integer))]
      if bad:
        raise ValueError(f"{form}; {where}: inputs must be integer node "
                         f"indices, not {bad!r}.")
      nodes.append(Node(op, tuple(int(i) for i in inputs)))
    return cls(tuple(nodes))

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_json(cls, text: str) -> "LayerGraph":
    return cls.from_dict(json.loads(text))

  # -- printing --------------------------------------------------------------

  def formula(self, latex: bool = False) -> str:
    """The output as an expression, e.g. ``x / max(sqrt(s2_bwh(x)), ...)``."""
    names = {i: (_LATEX_INITIAL[n] if latex else n)
             for i, n in enumerate(INITIAL_NODES)}
    for index in range(len(INITIAL_NODES), self.output + 1):
      node = self.node(index)
      primitive = primitives.get(node.op)
      template = primitive.latex if latex else primitive.text
      names[index] = primitives.render(template,
                                       [names[j] for j in node.inputs])
    formula = names[self.output]
    if not latex and formula.startswith("(") and formula.endswith(")"):
      formula = formula[1:-1] if _balanced(formula[1:-1]) else formula
    return formula

  def __str__(self) -> str:
    return self.formula()


def _balanced(text: str) -> bool:
  depth = 0
  for ch in text:
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth < 0:
      return False
  return depth == 0


def graph(*nodes: Sequence) -> LayerGraph:
  """Shorthand: ``graph(("mul", 3, 0), ("std_wh", 0), ...)``."""
  return LayerGraph(tuple(Node(op, tuple(inputs)) for op, *inputs in nodes))
