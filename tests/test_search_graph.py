"""The search space: graphs, their hash and formulas, generation, mutation,
selection, and compiled layers equal to the hand-written ones."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import evonorm_layers
from evonorm_layers.search import evolution
from evonorm_layers.search import known_layers
from evonorm_layers.search import primitives
from evonorm_layers.search.graph import LayerGraph
from evonorm_layers.search.graph import graph
from evonorm_layers.search.layer import SearchedNormActivation
from evonorm_layers.search.layer import register_searched_layer
from tests import layer_helpers

B0 = known_layers.KNOWN_GRAPHS["evonorm_b0"]


def test_json_round_trip():
  for g in known_layers.KNOWN_GRAPHS.values():
    again = LayerGraph.from_json(g.to_json())
    assert again == g and hash(again) == hash(g)
    assert json.loads(g.to_json()) == g.to_dict()


def test_fingerprint_ignores_unused_nodes_duplicates_and_operand_order():
  padded = graph(("tanh", 0), ("std_bwh", 0), ("mul", 0, 3), ("std_wh", 0),
                 ("add", 7, 6), ("exp", 2), ("max", 5, 8), ("div", 0, 10))
  assert padded.fingerprint() == B0.fingerprint()
  assert padded.canonical() == B0.canonical()
  duplicated = graph(("sigmoid", 0), ("sigmoid", 0), ("mul", 4, 5))
  assert duplicated.fingerprint() == graph(("sigmoid", 0),
                                           ("mul", 4, 4)).fingerprint()
  assert B0.fingerprint() != known_layers.B0_VARIANTS[
      "max_to_add"].fingerprint()
  assert len(B0.fingerprint()) == 16


def test_a_graph_normalizes_when_a_statistic_of_x_reaches_the_output():
  for name, g in known_layers.KNOWN_GRAPHS.items():
    assert g.normalizes, name
  for g in (graph(("max", 0, 1)),  # ReLU
            graph(("tanh", 0)),
            graph(("std_wh", 2), ("mul", 0, 4)),  # a statistic of v0 only
            graph(("std_wh", 0), ("tanh", 0))):  # the statistic is unused
    assert not g.normalizes, g.to_dict()
  assert graph(("tanh", 0), ("std_wh", 4), ("div", 4, 5)).normalizes


def test_formulas_read_like_the_paper():
  assert B0.formula() == "x / max(sqrt(s2_bwh(x)), (v1*x + sqrt(s2_wh(x))))"
  assert known_layers.KNOWN_GRAPHS["evonorm_s0"].formula() == (
      "x*sigmoid(v1*x) / sqrt(s2_whc/g(x))")
  assert B0.formula(latex=True) == (
      r"\frac{x}{\max\left(\sqrt{s^2_{b,w,h}\left(x\right)}, "
      r"\left(v_1 x + \sqrt{s^2_{w,h}\left(x\right)}\right)\right)}")


@pytest.mark.parametrize("nodes, message", [
    ((), "at least one"),
    ((("add", 0),), r"takes 2 inputs"),
    ((("neg", 4),), r"must read earlier nodes \(0..3\)"),
    ((("conv", 0),), "Unknown search primitive 'conv'"),
    (tuple(("neg", 0) for _ in range(11)), "at most 10"),
])
def test_invalid_graphs_are_rejected(nodes, message):
  with pytest.raises(ValueError, match=message):
    graph(*nodes)


@pytest.mark.parametrize("data, message", [
    ({"nodes": [["neg", [0, 1.9]]]}, r"inputs must be integer node indices, "
     r"not \[1.9\]"),
    ({"nodes": [["neg", [True]]]}, r"not \[True\]"),
    ({"nodes": [["neg", ["0"]]]}, r"not \['0'\]"),
    ({"nodes": [[7, [0]]]}, "the op must be a string"),
    ({"nodes": [["neg"]]}, r"is not \[op, \[input, ...\]\]"),
    ({"nodes": "neg"}, "A layer graph is a dict"),
    ([["neg", [0]]], "A layer graph is a dict"),
])
def test_from_dict_coerces_nothing(data, message):
  with pytest.raises(ValueError, match=message):
    LayerGraph.from_dict(data)
  assert LayerGraph.from_dict({"nodes": [["neg", [0]]]}) == graph(("neg", 0))


def test_random_graphs_are_valid_and_respect_the_batch_switch():
  rng = np.random.default_rng(0)
  sizes, batch_ops = set(), 0
  for _ in range(500):
    g = evolution.random_graph(rng)
    g.validate()
    sizes.add(len(g.nodes))
    batch_ops += g.uses_batch_statistics
    s = evolution.random_graph(rng, batch_independent=True)
    assert not any(primitives.get(n.op).uses_batch for n in s.nodes)
  assert sizes == set(range(1, 11))
  assert batch_ops > 0


def test_mutation_keeps_validity_changes_one_node_and_the_function():
  rng = np.random.default_rng(1)
  for _ in range(300):
    parent = evolution.random_graph(rng)
    child = evolution.mutate(parent, rng)
    child.validate()
    assert len(child.nodes) == len(parent.nodes)
    assert sum(a != b for a, b in zip(parent.nodes, child.nodes)) == 1
    assert child.fingerprint() != parent.fingerprint()
  batch_free = graph(("sigmoid", 0), ("mul", 0, 4), ("std_whc/g", 0),
                     ("div", 5, 6))
  for _ in range(100):
    child = evolution.mutate(batch_free, rng, batch_independent=True)
    assert not child.uses_batch_statistics


def test_pareto_front_and_selection():
  members = [
      {"id": 0, "fitness": {"a": 0.9, "b": 0.1}},
      {"id": 1, "fitness": {"a": 0.5, "b": 0.6}},  # best average
      {"id": 2, "fitness": {"a": 0.1, "b": 0.9}},
      {"id": 3, "fitness": {"a": 0.4, "b": 0.5}},  # dominated by 1
  ]
  assert {m["id"] for m in evolution.pareto_front(members)} == {0, 1, 2}
  rng = np.random.default_rng(0)
  assert evolution.select_parent(members, 4, "average", rng)["id"] == 1
  winners = {evolution.select_parent(members, 4, "pareto", rng)["id"]
             for _ in range(200)}
  assert winners == {0, 1, 2}
  with pytest.raises(ValueError, match="criterion must be one of"):
    evolution.select_parent(members, 2, "best", rng)


def _copy_shared_variables(searched, reference):
  """Hand-written variables into the compiled layer, by role."""
  by_role = {}
  for v in reference.weights:
    short = v.name.split("/")[-1].split(":")[0]
    by_role[short.replace("moving_", "")] = v
  for v in searched.weights:
    short = v.name.split("/")[-1].split(":")[0]
    role = short.split("_", 2)[2] if short.startswith("moving_node") else short
    role = {"v0": "tau"}.get(role, role)
    if role in by_role:
      v.assign(by_role[role])


# Layers whose graph equals the hand-written layer for any parameters, and
# those equal only at initialization (see known_layers.py).
EXACT = ["evonorm_b0", "evonorm_b2", "evonorm_s0", "evonorm_s1", "evonorm_s2",
         "rs_rej"]
AT_INIT = ["evonorm_b1", "bn_relu", "bn_silu", "gn_relu", "ln_relu", "frn_tlu"]


@pytest.mark.parametrize("name", EXACT + AT_INIT)
def test_compiled_known_graphs_equal_hand_written_layers(name):
  rng = np.random.default_rng(0)
  kwargs = layer_helpers.layer_kwargs(name)
  reference = evonorm_layers.get_norm_activation(name, **kwargs)
  searched = SearchedNormActivation(
      known_layers.KNOWN_GRAPHS[name], groups=kwargs.get("groups", 32),
      momentum=kwargs.get("momentum", 0.9), epsilon=kwargs["epsilon"])
  shape = (6, 5, 5, 16)
  reference.build(shape)
  searched.build(shape)
  if name in EXACT:
    layer_helpers.randomize_variables(reference, rng)
  _copy_shared_variables(searched, reference)
  for step in range(4):
    training = step < 3
    x = layer_helpers.random_input(rng, shape)
    np.testing.assert_allclose(searched(x, training=training),
                               reference(x, training=training), rtol=1e-4,
                               atol=1e-5)
  for v in searched.weights:
    if "moving" in v.name:
      role = v.name.split("/")[-1].split(":")[0].split("_", 2)[-1]
      np.testing.assert_allclose(v.numpy(), reference.moving[role].numpy(),
                                 rtol=1e-5)


def test_searched_layer_is_usable_by_name_and_exports(tmp_path):
  name = "searched_test_b0"
  register_searched_layer(name, B0, overwrite=True)
  try:
    layer = evonorm_layers.get_norm_activation(name, momentum=0.5,
                                               name="norm")
    assert isinstance(layer, SearchedNormActivation) and layer.momentum == 0.5
    assert evonorm_layers.get_norm_activation_constructor(name).batch_dependent
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(8, 3)(inputs)
    x = layer(x)
    x = evonorm_layers.get_norm_activation(name, nonlinearity=False)(x)
    model = tf_keras.Model(inputs, tf_keras.layers.GlobalAveragePooling2D()(x))
    data = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(
        np.float32)
    model(data, training=True)
    expected = model(data, training=False).numpy()
    path = str(tmp_path / "model")
    model.save(path)
    for custom in (None, {"SearchedNormActivation": SearchedNormActivation}):
      loaded = tf_keras.models.load_model(path, custom_objects=custom)
      assert loaded.get_layer("norm").graph == B0.canonical()
      np.testing.assert_allclose(loaded(data, training=False), expected,
                                 rtol=1e-5, atol=1e-6)
    served = tf.saved_model.load(path).signatures["serving_default"]
    (out,) = served(tf.constant(data)).values()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  finally:
    evonorm_layers.unregister_norm_activation(name)
