"""The rejection protocols on the paper's examples (Table 7, Table 3)."""

import numpy as np
import pytest
import tf_keras

from evonorm_layers.search import evaluation
from evonorm_layers.search import protocols
from evonorm_layers.search import proxy_training
from evonorm_layers.search import runners
from evonorm_layers.search import known_layers
from evonorm_layers.search import anchors
from evonorm_layers.search import proxy_config
from evonorm_layers.search import proxy_data
from evonorm_layers.search.graph import graph

CONFIG = proxy_config.ProxyConfig(
    dataset="digits", image_size=16, width=4, batch_size=32,
    anchors=("resnet", "mobilenet"), quality_steps=40, train_steps=40,
    eval_examples=200)


@pytest.fixture(scope="module")
def data():
  return proxy_data.load_data(CONFIG)


def _with(**changes):
  return proxy_config.ProxyConfig(**{**CONFIG.to_dict(), **changes})


def _stability(g, anchor, data, config=CONFIG):
  model = anchors.build_model(anchor, runners.searched_norm_maker(g, config),
                              config)
  return protocols.stability_test(model, data, config)


@pytest.mark.parametrize("direction", proxy_config.STABILITY_DIRECTIONS)
@pytest.mark.parametrize("variant", ["max_to_add", "no_global_term"])
def test_stability_rejects_unstable_b0_variants(variant, direction, data):
  with pytest.raises(protocols.Rejected) as rejection:
    _stability(known_layers.B0_VARIANTS[variant], "resnet", data,
               _with(stability_direction=direction))
  assert rejection.value.reason == "stability"
  # As the paper observes, unstable layers blow up within a few steps.
  assert rejection.value.detail["steps"] <= 5
  assert not rejection.value.detail["grad_norm"] <= CONFIG.stability_threshold


@pytest.mark.parametrize("anchor", ["resnet", "mobilenet"])
def test_stability_passes_evonorm_b0_for_all_100_steps(anchor, data):
  record = _stability(known_layers.KNOWN_GRAPHS["evonorm_b0"], anchor, data)
  assert record["steps"] == CONFIG.stability_steps == 100
  assert record["max_grad_norm"] < CONFIG.stability_threshold


def test_finite_difference_ascent_follows_the_exact_direction(data):
  """Both ascents move each weight by the same length; the finite
  difference of gradients points where the second-order derivative does
  (EvoNorm-S0: a smooth network, so the two agree closely)."""
  config = _with(stability_step_size=0.05)
  model = anchors.build_model(
      "resnet", runners.searched_norm_maker(
          known_layers.KNOWN_GRAPHS["evonorm_s0"], config), config)
  start = [v.numpy() for v in model.trainable_variables]
  moved = {}
  for direction in proxy_config.STABILITY_DIRECTIONS:
    for variable, value in zip(model.trainable_variables, start):
      variable.assign(value)
    ascend = protocols.make_ascent_step(
        model, data, _with(stability_step_size=0.05,
                           stability_direction=direction))
    norm = float(ascend())
    moved[direction] = [v.numpy() - s
                        for v, s in zip(model.trainable_variables, start)]
    assert np.isfinite(norm) and norm > 0
  cosines = []
  for exact, difference in zip(moved["exact"], moved["finite_difference"]):
    a, b = exact.ravel(), difference.ravel()
    if np.linalg.norm(a) == 0:  # a weight the loss does not reach
      assert np.linalg.norm(b) == 0
      continue
    np.testing.assert_allclose(np.linalg.norm(b), np.linalg.norm(a),
                               rtol=1e-3)
    cosines.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
  assert len(cosines) > 10
  assert np.median(cosines) > 0.999 and min(cosines) > 0.99, cosines


def test_proxy_training_is_keras_sgd_with_momentum_and_cosine_decay(data):
  """The proxy's hand-written update (one fused op per weight) takes the
  steps tf_keras' SGD(momentum=0.9) takes with CosineDecay over
  ``train_steps``, on the same model, batches and gradients."""
  config = _with(train_steps=6, quality_steps=3, learning_rate=0.05)
  model = anchors.build_model("resnet", runners.searched_norm_maker(
      known_layers.KNOWN_GRAPHS["evonorm_s0"], config), config)
  start = model.get_weights()
  trainer = proxy_training.ProxyTrainer(model, data, config)
  trainer.train_until(config.train_steps)
  ours = [v.numpy() for v in model.trainable_variables]
  model.set_weights(start)
  optimizer = tf_keras.optimizers.SGD(
      tf_keras.optimizers.schedules.CosineDecay(config.learning_rate,
                                                config.train_steps),
      momentum=proxy_training.MOMENTUM)
  stream = proxy_data.batches(data.train, config.batch_size, config.seed)
  for _ in range(config.train_steps):
    _, grads = trainer.gradients(*next(stream))
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
  moved = 0.0
  for a, b, s in zip(ours, model.trainable_variables, start):
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-6)
    moved = max(moved, float(np.abs(a - s).max()))
  assert moved > 1e-3  # the weights did move
  assert np.any(trainer.velocities[0].numpy())


def test_batches_are_reproducible_reshuffled_and_complete():
  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  split = (images, np.arange(10))
  stream = proxy_data.batches(split, 4, seed=3)
  labels = np.concatenate([next(stream)[1] for _ in range(5)])
  # Each epoch is a permutation; the two differ; a batch spans them.
  assert sorted(labels[:10]) == sorted(labels[10:]) == list(range(10))
  assert list(labels[:10]) != list(labels[10:])
  again = proxy_data.batches(split, 4, seed=3)
  x, y = next(again)
  np.testing.assert_array_equal(y, labels[:4])
  np.testing.assert_allclose(x.ravel(), (y - 127.5) / 64.0)
  assert x.dtype == np.float32
  once = [y for _, y in proxy_data.batches(split, 4, seed=3, repeat=False)]
  assert [list(y) for y in once] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


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
  with pytest.raises(protocols.Rejected) as info:
    protocols.probe(g)
  assert info.value.reason == "quality"
  assert "does not depend on x" in info.value.detail["detail"]
  # Layers that do depend on x pass.
  protocols.probe(known_layers.KNOWN_GRAPHS["evonorm_b0"])
  protocols.probe(graph(("mean_bwh", 0)))  # constant per channel in a batch


@pytest.mark.parametrize("g", [graph(("max", 0, 1)), graph(("tanh", 0)),
                               graph(("std_wh", 2), ("mul", 0, 4))])
def test_probe_rejects_layers_that_do_not_normalize(g):
  with pytest.raises(protocols.Rejected) as info:
    protocols.probe(g)
  assert info.value.reason == "quality"
  assert "does not normalize" in info.value.detail["detail"]


def test_equivalent_layers_share_a_probe_fingerprint():
  b0 = known_layers.KNOWN_GRAPHS["evonorm_b0"]
  # max(a, b) == max(b, a) and v1*x == x*v1, written as different graphs.
  swapped = graph(("std_wh", 0), ("mul", 0, 3), ("add", 5, 4),
                  ("std_bwh", 0), ("max", 6, 7), ("div", 0, 8))
  assert protocols.probe(swapped) == protocols.probe(b0)
  assert protocols.probe(known_layers.KNOWN_GRAPHS["evonorm_s0"]) != (
      protocols.probe(b0))
