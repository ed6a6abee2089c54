"""Helpers shared by the layer tests."""

from __future__ import annotations

import numpy as np

import evonorm_layers

ALL_LAYERS = evonorm_layers.available_norm_activations()
BATCH_DEPENDENT = [n for n in ALL_LAYERS
                   if evonorm_layers.get_norm_activation_constructor(n)
                   .batch_dependent]
GROUPED = [n for n in ALL_LAYERS
           if "groups" in evonorm_layers.accepted_arguments(n)]


def layer_kwargs(layer_name, **overrides):
  """Constructor arguments exercising every option the layer takes."""
  accepted = evonorm_layers.accepted_arguments(layer_name)
  kwargs = {"epsilon": 1e-3}
  if "groups" in accepted:
    kwargs["groups"] = 4
  if "momentum" in accepted:
    kwargs["momentum"] = 0.7
  kwargs.update(overrides)
  return kwargs


def randomize_variables(layer, rng: np.random.Generator):
  """Sets every variable of a built layer to random values.

  Returns ``(params, moving)``: dicts from short variable name (``gamma``,
  ``v1``, ``variance``...) to the values set, for the NumPy reference.
  """
  params, moving = {}, {}
  for variable in layer.weights:
    short = variable.name.split("/")[-1].split(":")[0]
    shape = variable.shape
    if short.startswith("moving_"):
      stat = short[len("moving_"):]
      value = (rng.normal(0.0, 1.0, shape) if stat == "mean"
               else rng.uniform(0.5, 2.0, shape))
      moving[stat] = value
    else:
      value = {"gamma": lambda: rng.uniform(0.5, 1.5, shape) *
                                rng.choice([-1.0, 1.0], shape),
               "beta": lambda: rng.normal(0.0, 0.5, shape),
               "v1": lambda: rng.normal(0.0, 1.0, shape),
               "tau": lambda: rng.normal(0.0, 0.3, shape)}[short]()
      params[short] = value
    variable.assign(value.astype(np.float32))
  return params, moving


def random_input(rng, shape, scale=2.0, shift=0.5):
  return (rng.normal(shift, scale, shape)).astype(np.float32)


def split_over_replicas(strategy, array, per_replica: int):
  """A distributed value whose replica ``i`` holds
  ``array[i * per_replica:(i + 1) * per_replica]``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def shard(ctx):
    start = ctx.replica_id_in_sync_group * per_replica
    return tf.constant(array[start:start + per_replica])

  return strategy.experimental_distribute_values_from_function(shard)
