"""The rejection protocols on the paper's examples (Table 7, Table 3)."""

import numpy as np
import pytest

from evonorm_layers.search import evaluation
from evonorm_layers.search import known_layers
from evonorm_layers.search import proxies
from evonorm_layers.search.graph import graph

CONFIG = proxies.ProxyConfig(
    dataset="digits", image_size=16, width=4, batch_size=32,
    anchors=("resnet", "mobilenet"), quality_steps=40, train_steps=40,
    eval_examples=200)


@pytest.fixture(scope="module")
def data():
  return proxies.load_data(CONFIG)


def _stability(g, anchor, data):
  model = proxies.build_model(anchor, evaluation.norm_factory(g, CONFIG),
                              CONFIG)
  return evaluation.stability_test(model, data, CONFIG)


@pytest.mark.parametrize("variant", ["max_to_add", "no_global_term"])
def test_stability_rejects_unstable_b0_variants(variant, data):
  with pytest.raises(evaluation.Rejected) as rejection:
    _stability(known_layers.B0_VARIANTS[variant], "resnet", data)
  assert rejection.value.reason == "stability"
  # As the paper observes, unstable layers blow up within a few steps.
  assert rejection.value.detail["steps"] <= 5
  assert not rejection.value.detail["grad_norm"] <= CONFIG.stability_threshold


@pytest.mark.parametrize("anchor", ["resnet", "mobilenet"])
def test_stability_passes_evonorm_b0_for_all_100_steps(anchor, data):
  record = _stability(known_layers.KNOWN_GRAPHS["evonorm_b0"], anchor, data)
  assert record["steps"] == CONFIG.stability_steps == 100
  assert record["max_grad_norm"] < CONFIG.stability_threshold


def test_quality_rejects_the_papers_random_layer_and_keeps_b0(data):
  # Table 3 "Random": sign(z) sqrt(|z|), z = sqrt(s2_wh(sigmoid(x))): nearly
  # constant outputs, chance accuracy.
  random_layer = graph(("sigmoid", 0), ("std_wh", 4), ("sqrt", 5))
  config = CONFIG.__class__(**{**CONFIG.to_dict(), "anchors": ("resnet",),
                               "stability_steps": 0})
  record = evaluation.evaluate(random_layer, config, data)
  assert record["status"] == "rejected" and record["reason"] == "quality"
  assert record["quality"]["resnet"] < config.quality_threshold
  good = evaluation.evaluate(known_layers.KNOWN_GRAPHS["evonorm_b0"], config,
                             data)
  assert good["status"] == "accepted", good
  assert good["fitness"]["resnet"] > 2.5 * 0.1  # chance is 0.1
  assert set(good["seconds"]) >= {"probe", "quality", "training", "total"}


@pytest.mark.parametrize("g, reason", [
    (graph(("tanh", 2)), "quality"),  # does not depend on x
    (graph(("div", 0, 1)), "nan"),  # x / 0
    (graph(("exp", 0), ("exp", 4), ("exp", 5)), "nan"),  # overflow
])
def test_degenerate_layers_are_rejected_without_crashing(g, reason, data):
  record = evaluation.evaluate(g, CONFIG, data)
  assert record["status"] == "rejected" and record["reason"] == reason
  assert record["seconds"]["total"] < 30


@pytest.mark.parametrize("g", [
    graph(("mul", 0, 1)),  # x * 0
    graph(("neg", 0), ("add", 0, 4)),  # x + (-x)
    graph(("max", 0, 0), ("div", 4, 0)),  # max(x, x) / x
    graph(("neg", 0), ("neg", 4), ("div", 0, 5)),  # x / -(-x)
])
def test_probe_rejects_layers_whose_output_ignores_x(g):
  """These graphs read x, yet compute a constant: rejected at the probe
  (for free), not after the stability and quality tests."""
  with pytest.raises(evaluation.Rejected) as info:
    evaluation.probe(g)
  assert info.value.reason == "quality"
  assert "does not depend on x" in info.value.detail["detail"]
  # Layers that do depend on x pass.
  evaluation.probe(known_layers.KNOWN_GRAPHS["evonorm_b0"])
  evaluation.probe(graph(("mean_bwh", 0)))  # constant per channel in a batch


def test_equivalent_layers_share_a_probe_fingerprint():
  b0 = known_layers.KNOWN_GRAPHS["evonorm_b0"]
  # max(a, b) == max(b, a) and v1*x == x*v1, written as different graphs.
  swapped = graph(("std_wh", 0), ("mul", 0, 3), ("add", 5, 4),
                  ("std_bwh", 0), ("max", 6, 7), ("div", 0, 8))
  assert evaluation.probe(swapped) == evaluation.probe(b0)
  assert evaluation.probe(known_layers.KNOWN_GRAPHS["evonorm_s0"]) != (
      evaluation.probe(b0))
