"""BigGAN-deep: published parameter counts, every Table 6 layer training,
synchronized statistics, standing statistics, IS/FID math against SciPy,
Inception loaders, export, the entry point and the quickstart."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
from official.common import distribute_utils

import evonorm_layers
from evonorm_gan import digits_classifier
from evonorm_gan import evaluation
from evonorm_gan import export
from evonorm_gan import models
from evonorm_gan import train as train_lib
from evonorm_gan import trainer as trainer_lib
from tests import entry_points
from tests import layer_helpers
from tests.conftest import NUM_LOGICAL_CPUS

TABLE6_LAYERS = ["bn_relu", "evonorm_b0", "evonorm_s0", "gn_relu", "ln_relu",
                 "pixelnorm_relu"]
MNIST32 = "evonorm_biggan_deep_mnist32"
# Narrow and short: batches of 8, checkpoints every 2 steps.
TINY = ("generator.ch=4,discriminator.ch=4,data.global_batch_size=8,"
        "data.source=digits,"
        "trainer.steps_per_loop=2,trainer.summary_interval=2,"
        "trainer.checkpoint_interval=2,trainer.image_summary_interval=2,"
        "evaluation.num_samples=40,evaluation.batch_size=20,"
        "evaluation.standing_statistics_batches=2")


def test_published_parameter_counts_at_128():
  """BigGAN-deep 128, ch 128, 1000 classes, BN-ReLU: 50.39M (G) and 34.59M
  (D), BigGAN-PyTorch's layout (published: 50.4M and 34.6M)."""
  g = models.build(models.Generator(128, 128, 1000, "bn_relu"))
  d = models.build(models.Discriminator(128, 128, 1000))
  assert round(models.trainable_parameter_count(g) / 1e4) == 5039
  assert round(models.trainable_parameter_count(d) / 1e4) == 3459
  # The output layer: a 3x3 convolution from the last stage's width to 128
  # channels (147,584 parameters), of which the image keeps 3.
  assert g.output_conv.kernel.shape == (3, 3, 128, 128)
  assert g.output_conv.bias.shape == (128,)
  assert sum(int(tf.size(v)) for v in g.output_conv.trainable_variables) == (
      147_584)
  # Every generator norm site takes the layer; blocks are conditional.
  norms = g.norm_layers()
  assert len(norms) == 10 * 4 + 1
  assert all(type(n) is evonorm_layers.BatchNormReLU for n in norms)
  assert sum(n.gamma is None for n in norms) == 40  # conditional affine


@pytest.mark.heavy
@pytest.mark.parametrize("layer", TABLE6_LAYERS)
def test_each_table6_layer_trains(layer, tmp_path):
  """Two steps of the real training loop with each layer: compiled (as in
  training) for EvoNorm-B0, eagerly for the others (tracing the loop takes
  about a minute per layer on this CPU)."""
  config = train_lib.load_config(
      MNIST32, (), f"{TINY},norm_activation.type={layer}")
  strategy = distribute_utils.get_distribution_strategy("one_device")
  trainer = trainer_lib.GANTrainer(config, strategy, str(tmp_path))
  norms = trainer.generator.norm_layers()
  expected = evonorm_layers.get_norm_activation_constructor(layer)
  assert norms and all(type(n) is expected for n in norms)
  if layer == "gn_relu":
    assert {n.groups for n in norms} == {8}
  before = [v.numpy() for v in trainer.generator.trainable_variables]
  iterator = iter(strategy.distribute_datasets_from_function(
      lambda ctx: trainer_lib.data_lib.dataset(config.data, 32, 8, ctx)))
  loop = trainer._make_loop(iterator, run_eagerly=layer != "evonorm_b0")  # pylint: disable=protected-access
  logs = loop(tf.constant(2))
  assert all(np.isfinite(float(v)) for v in logs.values()), logs
  assert int(trainer.step.numpy()) == 2
  after = [v.numpy() for v in trainer.generator.trainable_variables]
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  ema = [v.numpy() for v in trainer.ema_generator.trainable_variables]
  # Before ema_start the EMA generator is a copy of the generator.
  for a, b in zip(ema, after):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_offline_images_are_each_image_resized_and_cropped():
  """The offline datasets are resized as one batch; each image equals its
  own resize (28x28 MNIST digits padded to 32, then to 16: a 2x2 area
  mean, gray copied to RGB, in [-1, 1])."""
  images, labels = trainer_lib.data_lib.offline_images("mnist5k", 16)
  raw, raw_labels = trainer_lib.data_lib.offline_arrays("mnist5k")
  assert images.shape == (len(raw), 16, 16, 3) and images.dtype == np.float32
  np.testing.assert_array_equal(labels, raw_labels)
  for i in (0, len(raw) - 1):
    one = trainer_lib.data_lib.resize_and_crop(raw[i], 16).numpy()
    np.testing.assert_allclose(images[i], one, atol=1e-5)
    pooled = raw[i].astype(np.float64).reshape(16, 2, 16, 2).mean((1, 3))
    np.testing.assert_allclose(images[i, ..., 0], pooled / 127.5 - 1,
                               atol=1e-4)
    assert np.array_equal(images[i, ..., 0], images[i, ..., 2])


def test_kept_channels_equal_the_full_convolution_sliced():
  """SNConv2D(kept_channels=3) convolves only the kept channels, with the
  spectral norm of the whole kernel: outputs and gradients equal a full
  128-channel convolution whose first 3 channels are kept."""
  from evonorm_gan import layers as gan_layers  # pylint: disable=g-import-not-at-top
  x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 8, 16)),
                  tf.float32)
  kept = gan_layers.SNConv2D(128, 3, kept_channels=3)
  full = gan_layers.SNConv2D(128, 3)
  kept(x, training=False), full(x, training=False)
  for a, b in zip(full.variables, kept.variables):
    a.assign(b)
  results = []
  for layer, view in ((kept, lambda y: y), (full, lambda y: y[..., :3])):
    with tf.GradientTape() as tape:
      y = view(layer(x, training=True))
      loss = tf.reduce_sum(tf.sin(y))
    results.append((y, tape.gradient(loss, [layer.kernel, layer.bias])))
  (y_kept, g_kept), (y_full, g_full) = results
  assert y_kept.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(y_kept, y_full, rtol=1e-5, atol=1e-6)
  for a, b in zip(g_kept, g_full):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The dropped channels shape the output through sigma only.
  assert np.abs(g_kept[0][..., 3:]).max() > 0
  assert kept.compute_output_shape((2, 8, 8, 16)) == (2, 8, 8, 3)
  with pytest.raises(ValueError, match=r"`kept_channels` must be in \[1, "
                     r"filters=128\]. Received: kept_channels=200"):
    gan_layers.SNConv2D(128, 3, kept_channels=200)


def _generator_on_replicas(name):
  strategy = tf.distribute.MirroredStrategy(
      [f"/cpu:{i}" for i in range(NUM_LOGICAL_CPUS)])
  kwargs = dict(resolution=32, ch=4, num_classes=10, z_dim=16, shared_dim=16,
                attention_resolutions=())
  with strategy.scope():
    synced = models.build(models.Generator(
        norm_activation={"type": name, "synchronized": True}, **kwargs))
  single = models.build(models.Generator(norm_activation=name, **kwargs))
  for a, b in zip(synced.variables, single.variables):
    b.assign(a.numpy() if not hasattr(a, "values") else a.values[0].numpy())
  return strategy, synced, single


@pytest.mark.heavy
# BN-ReLU's synchronized statistics are the same code (batch moments of
# BatchDependentNormActivation), tested layer by layer in test_distributed.py.
@pytest.mark.parametrize("name", ["evonorm_b0"])
def test_synchronized_generator_equals_one_device(name):
  strategy, synced, single = _generator_on_replicas(name)
  per_replica = 2
  rng = np.random.default_rng(0)
  z = rng.normal(size=(per_replica * NUM_LOGICAL_CPUS, 16)).astype(np.float32)
  y = rng.integers(0, 10, per_replica * NUM_LOGICAL_CPUS).astype(np.int32)

  def shard(array):
    return layer_helpers.split_over_replicas(strategy, array, per_replica)

  @tf.function
  def run(z, y):
    return strategy.run(lambda z, y: synced([z, y], training=True),
                        args=(z, y))

  got = np.concatenate([v.numpy() for v in run(shard(z), shard(y)).values])
  want = single([z, y], training=True).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # And the moving statistics, averaged over the replicas' copies.
  for a, b in zip(synced.norm_layers(), single.norm_layers()):
    for stat in b.moving:
      np.testing.assert_allclose(a.moving[stat].numpy(),
                                 b.moving[stat].numpy(), rtol=1e-4,
                                 atol=1e-5)


def test_standing_statistics_are_the_mean_of_batch_statistics():
  g = models.build(models.Generator(32, 4, 10, "evonorm_b0", z_dim=16,
                                    shared_dim=16, attention_resolutions=()))
  layers = [l for l in g.norm_layers()
            if isinstance(l, evonorm_layers.BatchDependentNormActivation)]
  recorded = {id(l): [] for l in layers}
  originals = {}
  for layer in layers:
    originals[id(layer)] = layer.update_moving

    def record(stats, count, layer=layer):
      recorded[id(layer)].append({k: tf.reshape(v, [-1]).numpy()
                                  for k, v in stats.items()})
      return originals[id(layer)](stats, count)

    layer.update_moving = record
  for layer in layers:  # arbitrary values before
    for v in layer.moving.values():
      v.assign(tf.fill(v.shape, 7.0))
  updated = evaluation.accumulate_standing_statistics(g, 5, 6, 10)
  assert updated == len(layers) == 6 * 4 + 1  # 6 blocks at 32x32
  for layer in layers:
    assert len(recorded[id(layer)]) == 5
    for stat, variable in layer.moving.items():
      mean = np.mean([r[stat] for r in recorded[id(layer)]], axis=0)
      np.testing.assert_allclose(variable.numpy(), mean, rtol=1e-5,
                                 atol=1e-6)
    assert layer.momentum == 0.9  # restored


def test_inception_score_and_fid_match_numpy_and_scipy():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (500, 10))
  p = scipy.special.softmax(logits, axis=1)
  marginal = p.mean(axis=0)
  want_is = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), 1)))
  np.testing.assert_allclose(evaluation.inception_score(logits), want_is,
                             rtol=1e-10)
  uniform = np.zeros((100, 10))
  np.testing.assert_allclose(evaluation.inception_score(uniform), 1.0)

  a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
  b = rng.normal(0.5, 1.0, size=(300, 16)) @ rng.normal(size=(16, 16))
  mu_a, mu_b = a.mean(0), b.mean(0)
  sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = scipy.linalg.sqrtm(sa @ sb).real
  want_fid = np.sum((mu_a - mu_b) ** 2) + np.trace(sa + sb - 2 * root)
  np.testing.assert_allclose(evaluation.frechet_distance(a, b), want_fid,
                             rtol=1e-6)
  assert abs(evaluation.frechet_distance(a, a)) < 1e-6


@pytest.fixture(scope="module")
def mnist_classifier(tmp_path_factory):
  """The digits classifier of mnist5k at 32x32, trained once per module
  (4 epochs: over 0.9 accuracy already; the quickstart trains 10)."""
  path = str(tmp_path_factory.mktemp("classifier") / "mnist5k_res32")
  accuracy = digits_classifier.train_and_save(path, "mnist5k", 32, epochs=4)
  return path, accuracy


@pytest.mark.heavy
def test_class_agreement_of_real_and_shuffled_digits(mnist_classifier):
  """The metric itself: real validation digits agree with their labels (the
  classifier's accuracy), the same digits with shuffled labels at chance."""
  path, accuracy = mnist_classifier
  classifier = evaluation.Classifier(path)
  images, labels = digits_classifier.real_images("mnist5k", 32)
  assert images.shape == (1000, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [100] * 10)
  pool, logits = classifier(images)
  assert pool.shape == (1000, 64) and logits.shape == (1000, 10)
  agreement = evaluation.class_agreement(logits, labels)
  assert agreement >= 0.9
  assert abs(agreement - accuracy) < 0.005  # the SavedModel is the model
  shuffled = np.random.default_rng(0).permutation(labels)
  assert abs(evaluation.class_agreement(logits, shuffled) - 0.1) < 0.03
  with open(os.path.join(path, "accuracy.txt")) as f:
    assert abs(float(f.read()) - accuracy) < 1e-4
  with pytest.raises(ValueError, match="1000 logits but 999 labels"):
    evaluation.class_agreement(logits, labels[1:])


def _stand_in_graph_def(path):
  """A tiny network with the standard Inception tensor names: images at
  ``Mul:0`` (fixed batch 1, as the real graph), ``pool_3:0``, ``logits:0``."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [1, 299, 299, 3], name="Mul")
    pool = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    pool = tf.identity(tf.concat([pool, pool ** 2], axis=-1), name="pool_3")
    logits = tf.matmul(tf.reshape(pool, [1, 6]),
                       tf.constant(np.arange(24, dtype=np.float32).reshape(
                           6, 4) / 10.0))
    tf.identity(logits, name="logits")
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(graph.as_graph_def().SerializeToString())


def test_inception_loaders_and_clear_errors(tmp_path):
  path = str(tmp_path / "classify_image_graph_def.pb")
  _stand_in_graph_def(path)
  classifier = evaluation.Classifier(path)
  images = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3), np.uint8)
  pool, logits = classifier(images, batch_size=2)
  assert pool.shape == (3, 6) and logits.shape == (3, 4)
  x = tf.image.resize(images.astype(np.float32) / 127.5 - 1.0, (299, 299))
  mean = tf.reduce_mean(x, axis=[1, 2]).numpy()
  np.testing.assert_allclose(pool[:, :3], mean, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="evaluation.inception_path"):
    evaluation.Classifier("")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    evaluation.Classifier(str(tmp_path / "missing.pb"))
  (tmp_path / "other.pb").write_bytes(
      tf.Graph().as_graph_def().SerializeToString())  # a graph, not its
  with pytest.raises(ValueError, match=r"other.pb' is not Inception's "
                     r"classify_image_graph_def.pb \(inception-2015-12-05, "
                     r"with Mul:0, pool_3:0 and logits:0\)"):
    evaluation.Classifier(str(tmp_path / "other.pb"))


def test_export_signature(tmp_path):
  g = models.build(models.Generator(32, 4, 10, "evonorm_s0", z_dim=16,
                                    shared_dim=16, attention_resolutions=()))
  export_dir = export.export_generator(g, str(tmp_path / "generator"))
  served = tf.saved_model.load(export_dir).signatures["serving_default"]
  z = np.random.default_rng(2).normal(size=(3, 16)).astype(np.float32)
  labels = np.array([0, 5, 9], np.int32)
  images = served(z=tf.constant(z), labels=tf.constant(labels),
                  truncation=tf.constant(0.5))["images"].numpy()
  assert images.shape == (3, 32, 32, 3)
  assert np.all(np.abs(images) <= 1.0)
  want = g([np.clip(z, -2, 2) * 0.5, labels], training=False).numpy()
  np.testing.assert_allclose(images, want, rtol=1e-5, atol=1e-5)


def _gan_flags(model_dir, overrides, *extra):
  return [f"--experiment={MNIST32}", f"--model_dir={model_dir}",
          f"--params_override={overrides},trainer.train_tf_function=false",
          "--noprogress", *extra]


def _gan_train(model_dir, overrides, *extra):
  return subprocess.run(
      [sys.executable, "-m", "evonorm_gan.train",
       *_gan_flags(model_dir, overrides, *extra)],
      capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.heavy
def test_entry_point_trains_resumes_and_evaluates(tmp_path):
  """The entry point (its loop run eagerly: compiled, it traces for a
  minute; test_each_table6_layer_trains runs the same loop) resumes from
  the checkpoint of a run trained here by the same trainer, evaluates
  IS/FID with a classifier given as a path, and exports the EMA
  generator."""
  model_dir = str(tmp_path / "gan")
  classifier = str(tmp_path / "classifier")
  digits_classifier.train_and_save(classifier, "digits", 32, epochs=1)
  config = train_lib.load_config(
      MNIST32, (), f"{TINY},trainer.train_steps=2,"
      "trainer.train_tf_function=false")
  trainer_lib.GANTrainer(
      config, distribute_utils.get_distribution_strategy("one_device"),
      model_dir).train(progress=False)
  assert tf.train.latest_checkpoint(model_dir).endswith("-2")
  # Resumed with another layer: refused before any work, not restored in
  # part (what the entry point and the quickstart call first).
  other = train_lib.load_config(MNIST32, (),
                                f"{TINY},norm_activation.type=evonorm_s0")
  with pytest.raises(ValueError, match=(
      r"--model_dir='.*' does not fit the model of this config "
      r"\(norm_activation.type=evonorm_s0\): \d+ variable\(s\) differ, "
      r"e\.g\. \S+/moving_variance is only in the checkpoint")):
    trainer_lib.GANTrainer(
        other, distribute_utils.get_distribution_strategy("one_device"),
        model_dir).check_checkpoint()
  # Started again with more steps, it resumes: 2 -> 4.
  second = _gan_train(model_dir, f"{TINY},trainer.train_steps=4,"
                      f"evaluation.inception_path={classifier}",
                      "--mode=train_and_eval",
                      f"--export_dir={tmp_path / 'export'}")
  assert second.returncode == 0, second.stderr[-3000:]
  assert tf.train.latest_checkpoint(model_dir).endswith("-4")
  with open(os.path.join(model_dir, "eval.json")) as f:
    results = json.load(f)
  assert results["step"] == 4 and np.isfinite(results["FID"])
  assert results["IS"] >= 1.0
  assert 0.0 <= results["class_agreement"] <= 1.0
  assert os.path.exists(os.path.join(model_dir, "samples_step4.png"))
  tags = set()
  for path in tf.io.gfile.glob(os.path.join(model_dir, "*", "events.*")):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      tags |= {v.tag for v in event.summary.value}
  assert {"d_loss", "g_loss", "ema_samples", "FID", "IS"} <= tags, tags
  served = tf.saved_model.load(str(tmp_path / "export"))
  assert "serving_default" in served.signatures


BAD_INPUT = {
    "unknown_layer": ("norm_activation.type=evonorm_b9",
                      "Unknown normalization-activation layer 'evonorm_b9'"),
    "resolution": ("generator.resolution=48",
                   "no architecture for resolution 48"),
    "missing_tfds": ("data.source=tfds,data.tfds_name=cifar10,"
                     "data.tfds_data_dir=/nonexistent", "is not prepared in"),
    "batch": ("data.global_batch_size=0",
              "data.global_batch_size=0 should be at least 1"),
    "probability": ("optimization.beta2=1.5",
                    "optimization.beta2=1.5 should be in [0, 1]"),
    # The classifier's config, not the GAN's.
    "other_config": ("task.model.norm_activation.type=evonorm_s0",
                     "--params_override: task is not a field of this "
                     "experiment's config; its section's fields are: data,"),
    "not_a_number": ("generator.ch=wide",
                     "generator.ch='wide' should be an integer"),
}


@pytest.fixture(scope="session")  # see test_model_garden.digits_dir
def bad_input_outcomes(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_input")
  cases = {name: _gan_flags(str(root / name), f"{TINY},{override}")
           for name, (override, _) in BAD_INPUT.items()}
  cases["no_inception_path"] = _gan_flags(str(root / "eval"), TINY,
                                          "--mode=eval")
  # Evaluation problems, found before anything is built or trained.
  (root / "notes.pb").write_text("not a graph")
  inception = root / "classify_image_graph_def.pb"
  _stand_in_graph_def(str(inception))
  cases["not_inception"] = _gan_flags(
      str(root / "eval"), f"{TINY},evaluation.inception_path={root}/notes.pb",
      "--mode=train_and_eval")
  cases["eval_without_checkpoint"] = _gan_flags(
      str(root / "empty"), f"{TINY},evaluation.inception_path={inception}",
      "--mode=eval")
  return entry_points.run("evonorm_gan.train", cases)


@pytest.mark.xdist_group("gan_train_bad_input")
@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line(bad_input_outcomes, case):
  result = bad_input_outcomes[case]
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if ": error: " in l]
  assert len(errors) == 1 and BAD_INPUT[case][1] in errors[0], \
      result.stderr[-2000:]
  assert errors[0].startswith("python -m evonorm_gan.train: error: ")
  assert "Traceback" not in result.stderr


def test_diverged_gan_stops_in_one_line_naming_its_last_checkpoint(
    tmp_path, capsys):
  """The GAN trainer raises FloatingPointError at a non-finite loss, before
  it saves; the entry points' handler names the checkpoint kept."""
  config = train_lib.load_config(MNIST32, (), TINY)
  kept = tf.train.Checkpoint(step=tf.Variable(2)).save(str(tmp_path / "ckpt"))
  with pytest.raises(SystemExit) as exit_:
    with train_lib.stop_on_divergence(config, str(tmp_path)):
      raise FloatingPointError("Non-finite GAN losses at step 4: {...}")
  assert exit_.value.code == 1
  (line,) = capsys.readouterr().err.splitlines()
  assert ": error: training diverged with norm_activation.type=evonorm_b0 " \
      "(Non-finite GAN losses at step 4" in line, line
  assert f"the latest checkpoint, {kept}, is the last one before it" in line
  assert "optimization.g_learning_rate" in line
  with pytest.raises(RuntimeError, match="unrelated"):  # not divergence
    with train_lib.stop_on_divergence(config, str(tmp_path)):
      raise RuntimeError("unrelated")


@pytest.mark.xdist_group("gan_train_bad_input")
@pytest.mark.parametrize("case, message", [
    ("no_inception_path", "IS and FID need an Inception network and nothing "
     "is downloaded: set evaluation.inception_path"),
    ("not_inception", "notes.pb' is not Inception's "
     "classify_image_graph_def.pb"),
    # Not a random generator's scores.
    ("eval_without_checkpoint", "empty', which holds none: train first"),
])
def test_evaluation_problems_are_one_line_before_work(bad_input_outcomes,
                                                      case, message):
  result = bad_input_outcomes[case]
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.count("\n") == 1, result.stderr[-2000:]
  assert result.stderr.startswith("python -m evonorm_gan.train: error: ")
  assert message in result.stderr, result.stderr


@pytest.mark.heavy
def test_quickstart_draws_digits_and_reports_fid(tmp_path):
  """The README's GAN quickstart (--compare path), shrunken."""
  workdir = str(tmp_path / "quickstart")
  result = subprocess.run(
      [sys.executable, "-m", "evonorm_gan.quickstart",
       f"--workdir={workdir}", "--layers=bn_relu,evonorm_b0", "--steps=2",
       f"--classifier_dir={tmp_path / 'classifier'}",
       f"--params_override={TINY},trainer.train_tf_function=false"],
      capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [l for l in result.stdout.splitlines()
          if l.startswith("| bn_relu |") or l.startswith("| evonorm_b0 |")]
  assert len(rows) == 2, result.stdout
  for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert 0.0 <= float(cells[1]) <= 1.0  # class agreement
    assert np.isfinite(float(cells[2])) and float(cells[2]) >= 0  # FID
  assert "Real validation digits: class agreement" in result.stdout
  for layer in ("bn_relu", "evonorm_b0"):
    assert os.path.getsize(os.path.join(workdir, layer, "samples.png")) > 0
  assert os.path.getsize(os.path.join(workdir, "compare.png")) > 0


@pytest.mark.parametrize("layer", TABLE6_LAYERS)
def test_table6_yaml_configs(layer):
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "official",
                      "configs", "experiments",
                      f"biggan_deep_imagenet128_{layer}_tpu.yaml")
  with open(path) as f:
    name = f.readline().split("=", 1)[1].strip()
  config = train_lib.load_config(name, [path])
  assert config.norm_activation.type == layer
  assert config.generator.resolution == 128 and config.generator.ch == 128
  assert config.data.global_batch_size == 2048
  assert config.optimization.d_steps == 2
  assert config.norm_activation.groups == 16
