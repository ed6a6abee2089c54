"""One traced layer for every candidate: graphs as data, not as code.

``SearchedNormActivation`` compiles a graph into TensorFlow ops, so every new
candidate means a new Keras model and new traced training, evaluation and
stability steps: seconds of Python and graph optimization per anchor before
the first step runs, more than the proxy training itself at laptop sizes.
``ProgramNormActivation`` holds its graph in variables instead (one row per
node: an op, two operand indices, and for aggregations an index set and a
moment) and interprets it, so a model built with it, and its traced steps,
evaluate any graph after :func:`load_program` assigns the variables. The
search builds and traces each anchor once per worker
(``runners.AnchorSession``) and then only assigns variables.

It computes what ``SearchedNormActivation`` computes for the same graph, in
training and inference, with the same moving statistics and the same first
and second derivatives (``tests/test_search_program.py``). Interpreting
costs time per step (measured at the laptop preset on the ResNet anchor: a
training step 3-4x the compiled layer's, a second-order stability step
15-20x, control flow and its gradients' bookkeeping), against seconds of
building and tracing saved per candidate and anchor: the search uses it
for the stability test, which most candidates fail within a step or two
(``evaluation.Placement``).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from evonorm_layers import affine as affine_lib
from evonorm_layers import base
from evonorm_layers import layout as layout_lib
from evonorm_layers import statistics as stats_lib
from evonorm_layers.search import graph as graph_lib
from evonorm_layers.search import primitives

N_INITIAL = len(graph_lib.INITIAL_NODES)
# Branch ids of the op switch: the element-wise primitives, then one branch
# for every aggregation (which one is data: a moment and an index set).
ELEMENTWISE = tuple(n for n, p in primitives.PRIMITIVES.items()
                    if not p.is_aggregation)
AGGREGATION = len(ELEMENTWISE)
INDEX_SET_IDS = {name: i for i, name in enumerate(primitives.INDEX_SETS)}
MOMENT_IDS = {name: i for i, name in enumerate(primitives.MOMENTS)}
# Program columns: op branch, first input, second input, index set, moment.
COLUMNS = 5


def encode(graph: graph_lib.LayerGraph,
           capacity: int = graph_lib.MAX_INTERMEDIATE_NODES):
  """The canonical graph as ``(program [capacity, 5] int32, size,
  batch_dependent)``; row ``i`` is node ``4 + i``: its branch, its inputs,
  and for aggregations the index set and the moment."""
  graph = graph.canonical()
  program = np.zeros([capacity, COLUMNS], np.int32)
  for row, node in enumerate(graph.nodes):
    primitive = primitives.get(node.op)
    inputs = list(node.inputs) + [0] * (2 - len(node.inputs))
    if primitive.is_aggregation:
      program[row] = [AGGREGATION, *inputs, INDEX_SET_IDS[primitive.index_set],
                      MOMENT_IDS[primitive.moment]]
    else:
      program[row] = [ELEMENTWISE.index(node.op), *inputs, 0, 0]
  return program, len(graph.nodes), graph.uses_batch_statistics


def moving_initial_values(program: np.ndarray, size: int) -> np.ndarray:
  """Each row's initial moving statistic: 0 for a mean, else 1."""
  values = np.ones([len(program)], np.float32)
  for row in range(size):
    if (program[row, 0] == AGGREGATION and
        program[row, 4] == MOMENT_IDS["mean"]):
      values[row] = 0.0
  return values


def _moments(z, axes):
  """Moments in plain ops (no custom gradient), so that the interpreter's
  first and second derivatives are plain autodiff through its
  ``while_loop`` and ``switch_case``."""
  mean = tf.reduce_mean(z, axes, keepdims=True)
  return mean, tf.reduce_mean(tf.math.squared_difference(z, mean), axes,
                              keepdims=True)


@functools.lru_cache(maxsize=None)
def interpreter(rank: int, training: bool, epsilon: float,
                eager: bool = False):
  """The function every ``ProgramNormActivation`` of this rank calls.

  ``(x, v0, v1, program, size, moving_rows, groups) -> (y, batch_rows)``:
  ``x`` channels-last of rank ``rank``, ``v0``/``v1`` ``[C]``, the program
  and its size, the moving statistic of every row ``[capacity, C]`` and the
  number of groups. ``y`` is the graph's output before the affine;
  ``batch_rows`` ``[capacity, C]`` is, for each batch-aggregation row in
  training, the batch value of its moment (mean, second moment or
  variance) for the caller's moving averages.

  One ``tf.function`` shared by all layers (unknown shapes in its
  signature, never inlined) is traced, and differentiated to first and
  second order, once per process instead of once per layer: that is most
  of the cost of building the search's anchors. Eager callers (``eager``)
  get a function of their own: one whose gradients were taken eagerly to
  second order failed when later differentiated twice inside a graph.
  """
  instance = list(range(1, rank - 1))
  # Channels-last, any channel count (the groups are a tensor, too).
  any_channels = layout_lib.TensorLayout(rank, rank - 1, channels=-1)
  capacity = graph_lib.MAX_INTERMEDIATE_NODES
  spec = tf.TensorSpec

  def run(x, v0, v1, program, size, moving_rows, groups):
    shape = tf.shape(x)
    param = tf.concat([tf.ones([rank - 1], tf.int32), shape[-1:]], 0)
    values = tf.TensorArray(tf.float32, size=N_INITIAL + capacity,
                            clear_after_read=False, infer_shape=False)
    values = values.write(0, x).write(1, tf.zeros_like(x))
    values = values.write(2, tf.broadcast_to(tf.reshape(v0, param), shape))
    values = values.write(3, tf.broadcast_to(tf.reshape(v1, param), shape))
    batch_rows = tf.TensorArray(tf.float32, size=capacity, infer_shape=False)

    def aggregate(row, code, z):
      mean, var = _moments(z, instance)
      stat_shape = tf.shape(mean)
      by_set = {"wh": (mean, var),
                "whc": stats_lib.group_moments(mean, var, any_channels, 1),
                "whc/g": stats_lib.group_moments(mean, var, any_channels,
                                                 groups)}
      if training:
        moments = stats_lib.batch_moments(mean, var, synchronized=False)
        by_set["bwh"] = (moments.mean, moments.variance)
      else:  # replaced by the moving statistic below
        by_set["bwh"] = by_set["wh"]

      def pick(k):
        return tf.gather(tf.stack([tf.broadcast_to(by_set[s][k], stat_shape)
                                   for s in primitives.INDEX_SETS]), code[3])

      set_mean, set_var = pick(0), pick(1)
      is_mean = tf.equal(code[4], MOMENT_IDS["mean"])
      # The moment before any root: mean, second moment (rms) or variance.
      moment = tf.where(is_mean, set_mean, tf.where(
          tf.equal(code[4], MOMENT_IDS["rms"]),
          set_var + tf.square(set_mean), set_var))
      if not training:
        moment = tf.where(tf.equal(code[3], INDEX_SET_IDS["bwh"]),
                          tf.broadcast_to(tf.reshape(moving_rows[row], param),
                                          stat_shape), moment)
      # (No square root of a mean, which may be negative: its NaN would
      # leak into the gradient of the tf.where.)
      value = tf.where(is_mean, moment, tf.sqrt(
          tf.where(is_mean, tf.ones_like(moment), moment) + epsilon))
      return tf.broadcast_to(value, shape), tf.reshape(moment[:1], [-1])

    def body(row, values, batch_rows):
      code = program[row]
      a, b = values.read(code[1]), values.read(code[2])
      branches = [lambda p=primitives.get(name): (
          p.fn(*((a, b)[:p.arity]), epsilon), tf.zeros_like(v0))
                  for name in ELEMENTWISE]
      branches.append(lambda: aggregate(row, code, a))
      out, batch_value = tf.switch_case(code[0], branches)
      return (row + 1, values.write(N_INITIAL + row, out),
              batch_rows.write(row, tf.stop_gradient(batch_value)))

    _, values, batch_rows = tf.while_loop(
        lambda row, *_: row < size, body, (tf.constant(0), values, batch_rows),
        maximum_iterations=capacity)
    rows = tf.range(capacity)
    batch_rows = tf.where((rows < size)[:, None],
                          batch_rows.gather(tf.minimum(rows, size - 1)),
                          tf.zeros_like(moving_rows))
    return values.read(N_INITIAL + size - 1), batch_rows

  return tf.function(run, autograph=False, input_signature=[
      spec([None] * rank, tf.float32), spec([None], tf.float32),
      spec([None], tf.float32), spec([capacity, COLUMNS], tf.int32),
      spec([], tf.int32), spec([capacity, None], tf.float32),
      spec([], tf.int32)], experimental_attributes={"_noinline": True})


class ProgramNormActivation(base.BatchDependentNormActivation):
  """A norm-activation layer running the graph held in its variables.

  The nodes run in a ``tf.while_loop`` over the program's rows (as many
  iterations as the loaded graph has nodes), reading earlier nodes from a
  ``TensorArray``; each row's op is a ``tf.switch_case`` over the
  element-wise primitives plus one branch for all aggregations, whose index
  set and moment are selected from the (small) per-channel statistics. All
  layers share one traced :func:`interpreter` function, and first and second
  derivatives go through it as through the compiled layer.

  Args:
    groups: groups of the ``whc/g`` aggregations (largest divisor fallback).
    Others as for ``SearchedNormActivation``; channels-last inputs only.

  Its weights ``v0``/``v1`` always exist (a graph that does not read them
  gets zero gradients for them). It is a search tool, not an export format:
  a found graph is exported as its ``SearchedNormActivation``.
  """

  def __init__(self, groups: int = 32, momentum: float = 0.9,
               epsilon: float = 1e-5, nonlinearity: bool = True, **kwargs):
    super().__init__(momentum=momentum, axis=-1, epsilon=epsilon,
                     nonlinearity=nonlinearity, **kwargs)
    self.capacity = graph_lib.MAX_INTERMEDIATE_NODES
    self.groups = layout_lib.validate_groups(groups, layer_name=self._label)

  def create_variables(self):
    self.resolved_groups = layout_lib.resolve_groups(
        self.groups, self.layout.channels, layer_name=self._label)
    self.moving_statistics = ("variance",)
    super().create_variables()
    # One moving statistic per program row (used by batch aggregations).
    self.moving_rows = self.add_weight(
        name="moving_rows", shape=[self.capacity, self.layout.channels],
        dtype=tf.float32, initializer="ones", trainable=False)
    self.program = self.add_weight(
        name="program", shape=[self.capacity, COLUMNS], dtype=tf.int32,
        initializer="zeros", trainable=False)
    self.program_size = self.add_weight(
        name="program_size", shape=[], dtype=tf.int32, initializer="ones",
        trainable=False)
    self.program_batch = self.add_weight(
        name="program_batch_dependent", shape=[], dtype=tf.bool,
        initializer="zeros", trainable=False)
    self.v = {name: self.add_channel_weight(name, init)
              for name, init in (("v0", "zeros"), ("v1", "ones"))
              if self.nonlinearity}

  def load(self, program, size: int, batch_dependent: bool):
    """Assigns a program (from :func:`encode`) and resets ``v0``, ``v1`` and
    the moving statistics to their initial values."""
    self.program.assign(program)
    self.program_size.assign(size)
    self.program_batch.assign(batch_dependent)
    for name, value in (("v0", 0.0), ("v1", 1.0)):
      if name in self.v:
        self.v[name].assign(tf.fill(self.v[name].shape, value))
    self.moving["variance"].assign(tf.ones_like(self.moving["variance"]))
    self.moving_rows.assign(tf.broadcast_to(
        moving_initial_values(program, size)[:, None],
        self.moving_rows.shape))

  def normalize_activate(self, x, training, affine):
    x = tf.cast(x, tf.float32)
    if not isinstance(training, bool):
      raise TypeError(f"{self._label} needs a Python bool `training`.")
    if not self.nonlinearity:
      return self._series_normalization(x, training, affine)
    y, batch_rows = interpreter(self.layout.rank, training, self.epsilon,
                                tf.executing_eagerly())(
        x, self.v["v0"], self.v["v1"], self.program, self.program_size,
        self.moving_rows, tf.constant(self.resolved_groups))
    if training:
      is_batch = tf.logical_and(
          tf.equal(self.program[:, 0], AGGREGATION),
          tf.equal(self.program[:, 3], INDEX_SET_IDS["bwh"]))
      has_samples = tf.greater(tf.shape(x)[0], 0)
      base.update_moving_average(self.moving_rows, batch_rows, self.momentum,
                                 (is_batch & has_samples)[:, None])
    return affine.apply(tf.ensure_shape(y, x.shape))

  def _series_normalization(self, x, training, affine):
    """``x / sqrt(var)``: the batch variance for B-series programs, the group
    variance otherwise (as ``SearchedNormActivation``), selected by value;
    plain moments, so that second derivatives go through."""
    mean, var = _moments(x, self.layout.instance_axes)
    group_var = stats_lib.group_moments(mean, var, self.layout,
                                        self.resolved_groups)[1]
    moving = self.channel_param(self.moving["variance"])[None]
    if training:
      batch_var = stats_lib.batch_moments(mean, var,
                                          synchronized=False).variance
      base.update_moving_average(
          self.moving["variance"], batch_var, self.momentum,
          self.program_batch & tf.greater(tf.shape(x)[0], 0))
    else:
      batch_var = moving
    var = tf.where(self.program_batch, tf.broadcast_to(batch_var, tf.shape(
        group_var)), group_var)
    return affine_lib.scale_shift(
        x, *affine.fold(tf.math.rsqrt(var + self.epsilon)))

  def get_config(self):
    config = super().get_config()
    config.update(groups=self.groups)
    config.pop("axis")
    return config


def load_program(model, graph: graph_lib.LayerGraph) -> None:
  """Loads ``graph`` into every ``ProgramNormActivation`` of ``model`` (a
  model, a module, or one such layer)."""
  layers = [l for l in (model, *getattr(model, "submodules", ()))
            if isinstance(l, ProgramNormActivation)]
  if not layers:
    raise ValueError("The model has no ProgramNormActivation layer.")
  encoded = encode(graph)
  for layer in layers:
    layer.load(*encoded)
