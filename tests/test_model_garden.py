"""The Model Garden side: entry point, resume, strategies, export, configs."""

import collections
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.core import exp_factory
from official.core import task_factory
from official.core import train_lib
from official.modeling import hyperparams
from official.vision.ops import preprocess_ops
from official.vision.serving import image_classification as image_classification_serving

import evonorm_layers
from evonorm_layers.search import KNOWN_GRAPHS
from evonorm_model_garden import checkpoints
from evonorm_model_garden import experiments
from evonorm_model_garden import export
from evonorm_vision.data import offline as offline_data
from tests import entry_points
from tests.overrides import EAGER

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAML_DIR = os.path.join(REPO, "official", "configs", "experiments")
# A tiny version of the quickstart: steps of 2, checkpoints every 2 steps.
FAST = ("trainer.steps_per_loop=2,trainer.checkpoint_interval=2,"
        "trainer.summary_interval=2,trainer.validation_steps=2,"
        "trainer.validation_interval=4,"
        "task.model.backbone.resnet_v2.width_multiplier=0.125,"
        "task.model.backbone.resnet_v2.model_id=18")


# Session-scoped: the suite's heavy-first order interleaves this module's
# tests with others', and a module-scoped fixture is built again each time
# its module's tests resume (this one trains a model in a subprocess).
@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("digits"))
  offline_data.write_tfrecords("digits", path)
  return path


def _data_override(data_dir):
  return (f"task.train_data.input_path={offline_data.file_pattern(data_dir, 'train')},"
          "task.validation_data.input_path="
          f"{offline_data.file_pattern(data_dir, 'validation')}")


def _train_cmd(model_dir, overrides, mode="train_and_eval",
               experiment_name="evonorm_resnet_digits"):
  return [sys.executable, "-m", "evonorm_vision.train",
          f"--experiment={experiment_name}", f"--mode={mode}",
          f"--model_dir={model_dir}", f"--params_override={overrides}"]


def _latest_step(model_dir):
  latest = tf.train.latest_checkpoint(model_dir)
  return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.fixture(scope="session")
def trained_model_dir(digits_dir, tmp_path_factory):
  """The real entry point in a subprocess: 4 steps, then evaluation."""
  model_dir = str(tmp_path_factory.mktemp("model"))
  result = subprocess.run(
      _train_cmd(model_dir, f"{FAST},{_data_override(digits_dir)},"
                 "trainer.train_steps=4"),
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, result.stderr


@pytest.mark.heavy
def test_entry_point_trains_evaluates_and_writes_summaries(trained_model_dir):
  model_dir, log = trained_model_dir
  assert _latest_step(model_dir) == 4
  assert os.path.exists(os.path.join(model_dir, "params.yaml"))
  assert glob.glob(os.path.join(model_dir, "train", "events.*"))
  assert glob.glob(os.path.join(model_dir, "validation", "events.*"))
  assert "eval | step:      4" in log and "'accuracy'" in log


@pytest.mark.heavy
def test_killed_training_resumes_from_its_checkpoint(digits_dir, tmp_path):
  """With a layer a search found (EvoNorm-B0's graph), named by config."""
  model_dir = str(tmp_path / "model")
  found = tmp_path / "best_layers.json"
  found.write_text(json.dumps(
      {"searched_b0": KNOWN_GRAPHS["evonorm_b0"].to_dict()}))
  searched = [f"--searched_layers={found}"]
  overrides = (f"{FAST},{EAGER},{_data_override(digits_dir)},"
               "task.model.norm_activation.type=searched_b0")
  process = subprocess.Popen(
      _train_cmd(model_dir, f"{overrides},trainer.train_steps=1000",
                 mode="train") + searched,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while _latest_step(model_dir) < 4:
      assert process.poll() is None, "training exited early"
      assert time.time() < deadline, "no checkpoint within 300 s"
      time.sleep(0.5)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  killed_at = _latest_step(model_dir)
  assert 4 <= killed_at < 1000
  # A kill during a save leaves the next checkpoint's files half-written
  # while the `checkpoint` index (rewritten atomically, last) still names
  # the previous one: they must never be read.
  torn = os.path.join(model_dir, f"ckpt-{killed_at + 2}")
  with open(f"{torn}.index", "wb") as f:
    f.write(b"\x00" * 7)
  os.makedirs(f"{torn}_temp", exist_ok=True)
  with open(os.path.join(f"{torn}_temp", "part-00000-of-00001.data-00000-of-"
                         "00001"), "wb") as f:
    f.write(b"\x00" * 100)

  target = killed_at + 2
  result = subprocess.run(
      _train_cmd(model_dir, f"{overrides},trainer.train_steps={target}",
                 mode="train") + searched,
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Registered searched layers: searched_b0" in result.stderr
  assert f"restored from checkpoint: {model_dir}/ckpt-{killed_at}" in (
      result.stderr)
  assert _latest_step(model_dir) == target
  variables = [name for name, _ in tf.train.list_variables(model_dir)]
  # The graph's batch aggregation keeps its moving variance; no BN's mean.
  assert any("/moving_node4_variance/" in n for n in variables), variables[:20]
  assert not any("moving_mean" in n for n in variables)
  # Resumed with another layer: refused before any work, not a partial
  # restore that trains on with the rest initialized.
  other = subprocess.run(
      _train_cmd(model_dir, f"{FAST},{EAGER},{_data_override(digits_dir)},"
                 f"task.model.norm_activation.type=bn_relu,"
                 f"trainer.train_steps={target + 2}", mode="train"),
      capture_output=True, text=True, timeout=600, check=False)
  assert other.returncode == 2, other.stderr[-3000:]
  assert re.search(r"python -m evonorm_vision.train: error: --model_dir=.* "
                   r"does not fit the model of this config \(layer bn_relu\)"
                   r": 34 variable\(s\) differ, e\.g\. final_norm/"
                   r"moving_mean is not in the checkpoint; final_norm/"
                   r"moving_variance is not in the checkpoint", other.stderr), (
                       other.stderr[-3000:])
  assert _latest_step(model_dir) == target


def test_init_checkpoint_must_fit_the_parts_it_initializes(trained_model_dir,
                                                          tmp_path):
  """task.init_checkpoint trained with EvoNorm-B0, given to an S0 model: one
  error before training, not Model Garden's bare AssertionError inside the
  trainer. A run resuming its own checkpoint does not read it."""
  model_dir, _ = trained_model_dir

  def params(overrides=""):
    return experiments.load_params(
        "evonorm_resnet_digits", (),
        f"{FAST},task.init_checkpoint={model_dir}{overrides}")

  s0 = params(",task.model.norm_activation.type=evonorm_s0")
  for modules in ("all", "backbone"):
    s0.task.init_checkpoint_modules = modules
    with pytest.raises(ValueError, match=(
        rf"task.init_checkpoint='{model_dir}' does not fit the model of this "
        r"config \(layer evonorm_s0\): \d+ variable\(s\) differ, e\.g\. "
        r"\w+/moving_variance is only in the checkpoint.*restore fewer "
        r"parts \(task.init_checkpoint_modules=backbone\)")):
      checkpoints.check_start(s0, str(tmp_path / "new"), "train")
  s0.task.init_checkpoint_modules = "decoder"
  with pytest.raises(ValueError, match=r"init_checkpoint_modules='decoder' "
                     r"names no part of this model"):
    checkpoints.check_start(s0, str(tmp_path / "new"), "train")
  # Evaluating reads no task.init_checkpoint, and needs a checkpoint.
  with pytest.raises(FileNotFoundError, match=r"--mode=eval evaluates the "
                     r"latest checkpoint of --model_dir='.*new', which holds "
                     r"none: train first"):
    checkpoints.check_start(s0, str(tmp_path / "new"), "eval")
  checkpoints.check_start(s0, str(tmp_path / "new"), "continuous_eval")
  same = params()
  for modules in ("all", "backbone"):
    same.task.init_checkpoint_modules = modules
    checkpoints.check_start(same, str(tmp_path / "new"), "train")
  missing = params()
  missing.task.init_checkpoint = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match=r"task.init_checkpoint=.*nope' "
                     "does not exist"):
    checkpoints.check_start(missing, str(tmp_path / "new"), "train")
  # Resuming or evaluating: the run's own checkpoint is checked,
  # task.init_checkpoint not.
  for mode in ("train", "eval", "train_and_eval"):
    with pytest.raises(ValueError, match=r"--model_dir=.* does not fit"):
      checkpoints.check_start(s0, model_dir, mode)


def test_missing_searched_layers_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"--searched_layers=.*nope.json"
                     r"' does not exist.*best_layers.json"):
    experiments.register_searched_layers([str(tmp_path / "nope.json")])


BAD_INPUT = {
    "missing_data": (
        "task.train_data.input_path=/nonexistent/train-*.tfrecord",
        r"No files match task.train_data.input_path='/nonexistent/train-\*"
        r".tfrecord'.*python -m evonorm_vision.data.offline --dataset=mnist5k"),
    "unknown_layer": (
        "task.model.norm_activation.type=evonorm_b9",
        r"Unknown normalization-activation layer 'evonorm_b9'. Valid names:"),
    "misspelled_key": (
        "task.model.norm_activaton.type=evonorm_s0",
        r"--params_override: task.model.norm_activaton is not a field of "
        r"this experiment's config; did you mean task.model.norm_activation"),
    "not_a_number": (
        "task.train_data.global_batch_size=abc",
        r"task.train_data.global_batch_size='abc' should be an integer"),
    "a_section": ("task.model=3", r"task.model is a section of the config"),
    "out_of_range": ("trainer.train_steps=0", r"trainer.train_steps=0 should "
                     r"be at least 1 \(its default is \d+\)"),
    "one_channel": ("task.model.input_size=[32,32,1]",
                    r"task.model.input_size=\[32, 32, 1\]: Model Garden's "
                    r"input pipelines decode every image to 3 channels"),
}
# Bad flags: (extra flags, the model_dir is a file?, error pattern).
BAD_FLAGS = {
    "missing_config_file": (["--config_file=/nonexistent/r50.yaml"], False,
                            r"--config_file='/nonexistent/r50.yaml' does "
                            "not exist"),
    "model_dir_is_a_file": ([], True, r"--model_dir='.*' is a file: pass a "
                            "directory"),
    "unknown_flag": (["--modle_dir=x"], False,
                     r"Unknown command line flag 'modle_dir'"),
}


@pytest.fixture(scope="session")  # see digits_dir
def bad_input_outcomes(digits_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_input")
  cases = {name: _train_cmd(str(root / name), overrides)[3:]
           for name, (overrides, _) in BAD_INPUT.items()}
  for name, (extra, is_file, _) in BAD_FLAGS.items():
    if is_file:
      (root / name).write_text("not a folder")
    cases[name] = _train_cmd(str(root / name), FAST)[3:] + extra
  cases["no_flags"] = []
  # Data that is not what the config says (checked on the first records).
  (root / "notes.tfrecord").write_text("not records")
  data = f"{FAST},{_data_override(digits_dir)}"
  cases["labels_outside_classes"] = _train_cmd(
      str(root / "labels"), f"{data},task.model.num_classes=5")[3:]
  cases["not_tfrecords"] = _train_cmd(
      str(root / "not_tfrecords"),
      f"{data},task.train_data.input_path={root / 'notes.tfrecord'}")[3:]
  cases["diverges"] = _train_cmd(
      str(root / "diverges"), f"{FAST},{_data_override(digits_dir)},"
      "trainer.train_steps=4,trainer.optimizer_config.warmup.linear."
      "warmup_steps=0,trainer.optimizer_config.learning_rate.cosine."
      "initial_learning_rate=1e8", mode="train")[3:]
  # Fine for 4 steps, then a learning rate of 1e8 (from the 5th update:
  # the schedule counts updates from 0), with Model Garden's recovery
  # allowed twice.
  cases["recovers"] = _train_cmd(
      str(root / "recovers"), f"{FAST},{_data_override(digits_dir)},"
      "trainer.train_steps=8,trainer.recovery_max_trials=2,"
      "trainer.optimizer_config.warmup.linear.warmup_steps=0,"
      "trainer.optimizer_config.learning_rate.type=stepwise,"
      "trainer.optimizer_config.learning_rate.stepwise.boundaries=[3],"
      "trainer.optimizer_config.learning_rate.stepwise.values=[0.01,1e8]",
      mode="train")[3:]
  return root, entry_points.run("evonorm_vision.train", cases)


@pytest.mark.xdist_group("vision_train_bad_input")
@pytest.mark.parametrize("case, pattern", [
    ("labels_outside_classes",
     r"task.train_data.input_path: .*train-00000-of-00001.tfrecord, record "
     r"\d+, has label \[\d\] outside \[0, 5\) \(task.model.num_classes=5\)"),
    ("not_tfrecords", r"notes.tfrecord is not a TFRecord file of examples"),
])
def test_bad_data_is_one_line_before_training(bad_input_outcomes, case,
                                              pattern):
  _, outcomes = bad_input_outcomes
  result = outcomes[case]
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.count("\n") == 1, result.stderr[-3000:]
  assert re.search(pattern, result.stderr), result.stderr


@pytest.mark.xdist_group("vision_train_bad_input")
def test_diverging_training_stops_in_one_line(bad_input_outcomes):
  """A learning rate of 1e8: Model Garden's blow-up check stops the run;
  the user reads which layer diverged, what was kept and what to try."""
  root, outcomes = bad_input_outcomes
  result = outcomes["diverges"]
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  (line,) = [l for l in result.stderr.splitlines() if ": error: " in l]
  assert line.startswith("python -m evonorm_vision.train: error: training "
                         "diverged with task.model.norm_activation.type="
                         "evonorm_b0 ("), line
  assert "Try a lower learning rate" in line
  assert line.endswith("or trainer.recovery_max_trials=3 to restart from the "
                       "last checkpoint automatically."), line
  latest = tf.train.latest_checkpoint(str(root / "diverges"))
  if latest:  # what a restart resumes from holds finite weights only
    reader = tf.train.load_checkpoint(latest)
    assert all(np.all(np.isfinite(reader.get_tensor(name)))
               for name, _ in tf.train.list_variables(latest)
               if "VARIABLE_VALUE" in name), latest


@pytest.mark.xdist_group("vision_train_bad_input")
def test_recovery_restarts_from_the_last_checkpoint_and_says_so(
    bad_input_outcomes):
  """trainer.recovery_max_trials=2: each blow-up after step 4 restarts from
  ckpt-4, on the terminal; the third stops the run in one line."""
  root, outcomes = bad_input_outcomes
  result = outcomes["recovers"]
  assert result.returncode == 1, result.stderr[-3000:]
  restarts = re.findall(r"step 6: training loss \S+; Model Garden's recovery "
                        r"restarts from (\S+) \(trial (\d) of 2\)",
                        result.stderr)
  checkpoint = str(root / "recovers" / "ckpt-4")
  assert restarts == [(checkpoint, "1"), (checkpoint, "2")], (
      result.stderr[-3000:])
  (line,) = [l for l in result.stderr.splitlines() if ": error: " in l]
  assert re.search(r"error: training diverged with task.model."
                   r"norm_activation.type=evonorm_b0 \(The loss value is "
                   r".* 3 times\.\); the latest checkpoint, .*ckpt-4, is "
                   r"the last one before it.* zero_init_residual=true on the "
                   r"backbone\.$", line), line
  assert tf.train.latest_checkpoint(str(root / "recovers")) == checkpoint


@pytest.mark.xdist_group("vision_train_bad_input")
@pytest.mark.parametrize("case", [*BAD_FLAGS, "no_flags"])
def test_entry_point_rejects_bad_flags_in_one_line(bad_input_outcomes, case):
  _, outcomes = bad_input_outcomes
  result = outcomes[case]
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.count("\n") == 1, result.stderr[-3000:]
  assert result.stderr.startswith("python -m evonorm_vision.train: error: ")
  pattern = (r"missing --experiment=\.\.\. --mode=\.\.\. "
             r"--model_dir=\.\.\.; see --helpshort" if case == "no_flags"
             else BAD_FLAGS[case][2])
  assert re.search(pattern, result.stderr), result.stderr


@pytest.mark.xdist_group("vision_train_bad_input")
@pytest.mark.parametrize("case", BAD_INPUT)
def test_entry_point_rejects_bad_input_before_training(bad_input_outcomes,
                                                       case):
  root, outcomes = bad_input_outcomes
  result = outcomes[case]
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if ": error: " in l]
  assert len(errors) == 1, result.stderr[-3000:]
  assert errors[0].startswith("python -m evonorm_vision.train: error: ")
  assert re.search(BAD_INPUT[case][1], errors[0]), errors[0]
  assert "Traceback" not in result.stderr
  assert not tf.io.gfile.glob(str(root / case / "ckpt-*"))


@pytest.mark.parametrize("experiment, override, message", [
    ("evonorm_resnet_digits", "task.model.dropout_rate=1.5",
     "task.model.dropout_rate=1.5 should be in [0, 1]"),
    ("evonorm_resnet_digits", "task.model.norm_activation.norm_epsilon=0",
     "task.model.norm_activation.norm_epsilon=0 should be above 0"),
    ("evonorm_resnet_digits", "task.model.input_size=[0,32,3]",
     "task.model.input_size=[0, 32, 3] should be a list of sizes of at least "
     "1"),
    ("evonorm_resnet_digits", "task.model.norm_activation.groups=-2",
     "task.model.norm_activation.groups=-2 should be at least 1"),
    ("evonorm_maskrcnn_shapes_quickstart", "task.model.num_classes=0",
     "task.model.num_classes=0 should be at least 1"),
    ("evonorm_biggan_deep_mnist32", "optimization.g_learning_rate=-1e-4",
     "optimization.g_learning_rate=-0.0001 should be above 0"),
])
def test_values_out_of_range_are_refused_when_loaded(experiment, override,
                                                     message, tmp_path):
  """The same check for --params_override and --config_file values."""
  prefix = "evonorm_biggan" if "biggan" in experiment else "evonorm_"
  if "biggan" in experiment:
    __import__("evonorm_gan.configs")  # registers the GAN's experiments
  with pytest.raises(ValueError, match=re.escape(
      f"--params_override: {message} (its default is ")):
    experiments.load_params(experiment, (), override, prefix=prefix)
  key, value = override.split("=")
  nested = __import__("yaml").safe_load(value)
  for part in reversed(key.split(".")):
    nested = {part: nested}
  path = tmp_path / "config.yaml"
  path.write_text(__import__("yaml").safe_dump(nested))
  with pytest.raises(ValueError, match=re.escape(
      f"--config_file={path}: {message} (its default is ")):
    experiments.load_params(experiment, (str(path),), prefix=prefix)


def test_unknown_experiment_lists_the_project_experiments():
  with pytest.raises(ValueError, match=r"Unknown experiment 'resnet_v9'") as e:
    experiments.check_experiment_name("resnet_v9")
  for name in ("evonorm_resnet_digits", "evonorm_resnet_mnist5k",
               "evonorm_resnet50_imagenet", "evonorm_biggan_deep_mnist32"):
    assert name in str(e.value)


def test_missing_tfds_dataset_says_where_it_looked(tmp_path):
  params = exp_factory.get_exp_config("evonorm_resnet_cifar10")
  params.override({"task": {"train_data": {"tfds_data_dir": str(tmp_path)}}})
  with pytest.raises(FileNotFoundError, match=r"TFDS dataset 'cifar10'.*not "
                     rf"prepared in '{tmp_path}.*tfds build cifar10.*Nothing "
                     "is downloaded"):
    experiments.check_inputs(params, "train")


def test_batch_not_divisible_by_replicas():
  params = exp_factory.get_exp_config("evonorm_resnet_digits")
  with pytest.raises(ValueError, match=r"global_batch_size=64 is not "
                     r"divisible by the 3 replicas.*multiple of 3"):
    experiments.check_batch_divisible(
        params.task.train_data.global_batch_size, 3,
        "task.train_data.global_batch_size")


def test_mirrored_strategy_with_synchronized_b0(digits_dir, tmp_path):
  """Model Garden's trainer under MirroredStrategy over 2 logical CPUs: with
  use_sync_bn the replicas' moving variances stay identical, without it they
  differ (the loop eager: synchronized statistics in a compiled step are
  test_fused_kernels' and test_distributed's)."""
  variances = {}
  for synchronized in (True, False):
    params = experiments.load_params(
        "evonorm_resnet_digits", (),
        f"{FAST},{EAGER},{_data_override(digits_dir)},trainer.train_steps=4,"
        f"task.model.norm_activation.use_sync_bn={synchronized}")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    # Each strategy numbers its collectives from the same base (see
    # conftest._own_collective_keys): the second takes a fresh range.
    tf.distribute.MirroredStrategy._collective_key_base += 10_000  # pylint: disable=protected-access
    with strategy.scope():
      task = task_factory.get_task(params.task)
    model, _ = train_lib.run_experiment(
        distribution_strategy=strategy, task=task, mode="train",
        params=params, model_dir=str(tmp_path / str(synchronized)))
    norms = [l for l in model._flatten_layers()  # pylint: disable=protected-access
             if isinstance(l, evonorm_layers.BatchDependentNormActivation)]
    assert norms and all(n.synchronized == synchronized for n in norms)
    variances[synchronized] = [
        np.stack([v.numpy() for v in n.moving["variance"].values])
        for n in norms]
    assert all(len(v) == 2 for v in variances[synchronized])  # replicas
  for per_replica in variances[True]:
    np.testing.assert_allclose(per_replica[0], per_replica[1], rtol=1e-5)
  assert any(not np.allclose(r[0], r[1], rtol=1e-3)
             for r in variances[False])


def _keras_logits(model_dir, images):
  """Logits of the Keras model restored from the checkpoint, preprocessed as
  the trainer's evaluation does (resize, normalize)."""
  params = experiments.load_params(
      "evonorm_resnet_digits", (), FAST)
  model = task_factory.get_task(params.task).build_model()
  tf.train.Checkpoint(model=model).read(
      tf.train.latest_checkpoint(model_dir)).expect_partial()
  x = tf.image.resize(tf.cast(images, tf.float32), [32, 32])
  x = preprocess_ops.normalize_image(x, offset=preprocess_ops.MEAN_RGB,
                                     scale=preprocess_ops.STDDEV_RGB)
  return model(x, training=False).numpy()


def _validation_records(data_dir, n):
  records = list(tf.data.TFRecordDataset(tf.io.gfile.glob(
      offline_data.file_pattern(data_dir, "validation"))).take(n))
  examples = [tf.train.Example.FromString(r.numpy()) for r in records]
  pngs = [e.features.feature["image/encoded"].bytes_list.value[0]
          for e in examples]
  images = np.stack([tf.io.decode_png(p, channels=3).numpy() for p in pngs])
  return [r.numpy() for r in records], pngs, images


def test_exported_image_tensor_model_matches_keras_model(
    trained_model_dir, digits_dir, tmp_path):
  """Served logits equal the Keras model restored from the same checkpoint,
  with the trainer's evaluation preprocessing computed independently."""
  model_dir, _ = trained_model_dir
  params = experiments.load_params("evonorm_resnet_digits", (),
                                          FAST)
  # What a killed export leaves: its partial folder beside the earlier,
  # complete export, which stays in place until the new one is complete.
  (tmp_path / "export.partial" / "variables").mkdir(parents=True)
  (tmp_path / "export.partial" / "saved_model.pb").write_bytes(b"\x08")
  (tmp_path / "export").mkdir()
  (tmp_path / "export" / "saved_model.pb").write_text("an earlier export")
  export_dir = export.export(params, model_dir, str(tmp_path / "export"))
  assert sorted(os.listdir(tmp_path)) == ["export"]
  _, _, images = _validation_records(digits_dir, 6)
  served = tf.saved_model.load(export_dir).signatures["serving_default"]
  (name,) = served.structured_input_signature[1]
  outputs = served(**{name: tf.constant(images)})
  expected = _keras_logits(model_dir, images)
  np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(outputs["probs"],
                             tf.nn.softmax(expected).numpy(), rtol=1e-4,
                             atol=1e-5)


def _tflite_logits(path, images):
  with warnings.catch_warnings():  # its move to ai_edge_litert
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(model_path=path)
  runner = interpreter.get_signature_runner()  # the serving signature's
  (name,) = runner.get_input_details()
  return runner(**{name: images})["logits"]


def test_export_entry_point_writes_float32_and_int8_tflite(
    trained_model_dir, digits_dir, tmp_path):
  """The export command of docs/model_garden.md with --tflite: float32
  TFLite (batches of 1: the export's batch size is not fixed) serves the
  SavedModel's logits; int8, calibrated on a .npy of digits, is quantized
  and serves."""
  model_dir, _ = trained_model_dir
  _, _, images = _validation_records(digits_dir, 64)
  np.save(tmp_path / "digits.npy", images)  # resized by the export
  # The TFLite model takes the model's input size.
  images = tf.cast(tf.round(tf.image.resize(images, (32, 32))),
                   tf.uint8).numpy()
  common = ["--experiment=evonorm_resnet_digits", f"--params_override={FAST}",
            f"--checkpoint_path={model_dir}", "--input_type=image_tensor"]
  outcomes = entry_points.run("evonorm_vision.export_saved_model", {
      "float32": [*common, f"--export_dir={tmp_path / 'export'}",
                  f"--tflite={tmp_path / 'float32.tflite'}"],
      "int8": [*common, f"--export_dir={tmp_path / 'export_int8'}",
               f"--tflite={tmp_path / 'int8.tflite'}",
               "--tflite_quantize=int8",
               f"--representative_data={tmp_path / 'digits.npy'}",
               "--representative_count=32"],
      "int8_without_data": [*common, f"--export_dir={tmp_path / 'no'}",
                            f"--tflite={tmp_path / 'no.tflite'}",
                            "--tflite_quantize=int8"],
      # Mistakes: each one line, nothing written.
      "other_layer": [*common[:1], f"--params_override={FAST},"
                      "task.model.norm_activation.type=evonorm_s0",
                      *common[2:], f"--export_dir={tmp_path / 'no'}"],
      "checkpoint_is_not_one": [
          *common[:2], f"--checkpoint_path={model_dir}/params.yaml",
          f"--export_dir={tmp_path / 'no'}"],
      "export_dir_is_a_file": [*common, f"--export_dir={digits_dir}/"
                               + os.listdir(digits_dir)[0]],
      "export_dir_holds_data": [*common, f"--export_dir={digits_dir}"],
  })
  for name in ("float32", "int8"):
    assert outcomes[name].returncode == 0, outcomes[name].stderr[-3000:]
  mistakes = {
      "int8_without_data": "--representative_data",
      # Trained with EvoNorm-B0: S0 has no moving variance (Model Garden
      # would restore the rest and export a model scoring chance).
      "other_layer": (r"does not fit the model of this config \(layer "
                      r"evonorm_s0\): \d+ variable\(s\) differ, e\.g\. "
                      r"\w+/moving_variance is only in the checkpoint"),
      "checkpoint_is_not_one": (r"params.yaml' is not a readable TensorFlow "
                                "checkpoint"),
      "export_dir_is_a_file": r"--export_dir='.*' is a file",
      # Replaced whole only when it is an earlier export.
      "export_dir_holds_data": (r"--export_dir='.*' holds files that are "
                                "not a SavedModel: pass a new or empty "
                                "folder"),
  }
  for name, pattern in mistakes.items():
    result = outcomes[name]
    assert result.returncode == 2, (name, result.stderr[-3000:])
    assert result.stderr.count("\n") == 1, (name, result.stderr[-3000:])
    assert re.search(pattern, result.stderr), (name, result.stderr)
  assert not (tmp_path / "no").exists()
  served = tf.saved_model.load(str(tmp_path / "export")).signatures[
      "serving_default"]
  (name,) = served.structured_input_signature[1]
  want = served(**{name: tf.constant(images)})["logits"].numpy()
  float32 = np.concatenate([
      _tflite_logits(str(tmp_path / "float32.tflite"), images[i:i + 1])
      for i in range(8)])
  np.testing.assert_allclose(float32, want[:8], rtol=1e-4,
                             atol=1e-4 * np.abs(want).max())
  # int8 weights and activations (how close int8 comes to Keras, on
  # networks trained long enough to have a clear answer: test_tflite.py;
  # this one trained 4 steps).
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(
        model_path=str(tmp_path / "int8.tflite"))
  kinds = collections.Counter(
      str(d["dtype"].__name__) for d in interpreter.get_tensor_details())
  assert kinds["int8"] > kinds["float32"], kinds
  quantized = _tflite_logits(str(tmp_path / "int8.tflite"), images[:1])
  assert quantized.shape == (1, 10) and np.all(np.isfinite(quantized))


@pytest.mark.parametrize("input_type", ["image_bytes", "tf_example"])
def test_exported_encoded_input_models_match_in_process_model(
    trained_model_dir, digits_dir, tmp_path, input_type):
  """For encoded inputs Model Garden decodes and resizes in uint8, so the
  reference is the same export module run in this process."""
  model_dir, _ = trained_model_dir
  params = experiments.load_params("evonorm_resnet_digits", (),
                                          FAST)
  export_dir = export.export(params, model_dir, str(tmp_path),
                                         input_type=input_type)
  records, pngs, _ = _validation_records(digits_dir, 6)
  inputs = tf.constant(pngs if input_type == "image_bytes" else records)
  served = tf.saved_model.load(export_dir).signatures["serving_default"]
  (name,) = served.structured_input_signature[1]
  outputs = served(**{name: inputs})

  module = image_classification_serving.ClassificationModule(
      params=params, batch_size=None, input_image_size=[32, 32],
      input_type=input_type)
  tf.train.Checkpoint(model=module.model).read(
      tf.train.latest_checkpoint(model_dir)).expect_partial()
  infer = (module.inference_from_image_bytes if input_type == "image_bytes"
           else module.inference_from_tf_example)
  expected = infer(inputs)
  for key in ("logits", "probs"):
    np.testing.assert_allclose(outputs[key], expected[key], rtol=1e-5,
                               atol=1e-6)


def test_normalization_variables_are_not_weight_decayed():
  params = experiments.load_params(
      "evonorm_resnet_digits", (), f"{FAST},"
      "task.losses.l2_weight_decay=1e-4")
  model = task_factory.get_task(params.task).build_model()
  regularized = [l for l in model._flatten_layers()  # pylint: disable=protected-access
                 if getattr(l, "kernel_regularizer", None) is not None]
  kernels = [l for l in model._flatten_layers()  # pylint: disable=protected-access
             if isinstance(l, (tf_keras.layers.Conv2D,
                               tf_keras.layers.Dense))]
  assert regularized and sorted(map(id, regularized)) == sorted(
      map(id, kernels))
  assert len(model.losses) == len(kernels)
  norm_vars = {id(v) for v in evonorm_layers.normalization_variables(model)}
  decayed = {id(v) for v in evonorm_layers.decayed_variables(model)}
  assert norm_vars and not norm_vars & decayed


def _yaml_files():
  """The Model Garden task experiments' YAML files (the GAN's are checked in
  tests/test_gan.py)."""
  return sorted(p for p in glob.glob(os.path.join(YAML_DIR, "*.yaml"))
                if not os.path.basename(p).startswith("biggan"))


def test_yaml_configs_exist_for_the_papers_settings():
  names = {os.path.basename(p) for p in _yaml_files()}
  assert {"imagenet_resnet50_evonorm_b0_tpu.yaml",
          "imagenet_resnet50_evonorm_s0_4_per_replica.yaml"} <= names


@pytest.mark.parametrize("path", _yaml_files(), ids=os.path.basename)
def test_yaml_config_parses(path):
  with open(path) as f:
    first = f.readline()
  assert first.startswith("# --experiment="), "first line names the experiment"
  name = first.split("=", 1)[1].strip()
  params = exp_factory.get_exp_config(name)
  params = hyperparams.override_params_dict(params, path, is_strict=True)
  params.validate()
  evonorm_layers.registry.resolve_name(params.task.model.norm_activation.type)
  # The learning rate scales linearly with the batch, from the recipe's.
  default = exp_factory.get_exp_config(name)

  def lr_per_image(p):
    lr = p.trainer.optimizer_config.learning_rate.get()
    base = getattr(lr, "initial_learning_rate", None) or lr.values[0]
    return base / p.task.train_data.global_batch_size

  np.testing.assert_allclose(lr_per_image(params), lr_per_image(default),
                             rtol=1e-6)
  steps_per_epoch = params.trainer.steps_per_loop
  assert params.trainer.train_steps % steps_per_epoch == 0


@pytest.mark.heavy
def test_quickstart_compare_shows_progress_and_a_table(tmp_path):
  """The README's quickstart (`--compare` path: several layers, table and
  plot), shrunken: a narrow network, one epoch."""
  workdir = str(tmp_path / "quickstart")
  result = subprocess.run(
      [sys.executable, "-m", "evonorm_vision.quickstart", f"--workdir={workdir}",
       "--epochs=1", "--layers=bn_relu,evonorm_s0",
       f"--params_override={FAST},{EAGER},"
       "task.model.norm_activation.groups=4,trainer.train_steps=4"],
      capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  table = [l for l in result.stdout.splitlines() if l.startswith("| ")]
  assert len(table) == 3, result.stdout  # header + one row per layer
  for row, layer in zip(table[1:], ("bn_relu", "evonorm_s0")):
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == layer
    assert 0.0 <= float(cells[1]) <= 1.0 and 0.0 <= float(cells[2]) <= 1.0
  # A progress bar, not the trainer's logs: those are in the model dirs.
  assert "step" in result.stderr and "train | step" not in result.stdout
  assert len(result.stdout.splitlines()) < 12, result.stdout
  for layer in ("bn_relu", "evonorm_s0"):
    with open(os.path.join(workdir, layer, "train.log")) as f:
      assert "train | step" in f.read()
  assert os.path.getsize(os.path.join(workdir, "accuracy.png")) > 0


def test_quickstart_bad_layer_is_one_line(tmp_path):
  """A real process: its whole stderr is the one error line (TensorFlow's
  C++ start-up lines kept off the terminal); EVONORM_VERBOSE=1 shows them
  and the traceback, for bug reports."""
  command = [sys.executable, "-m", "evonorm_vision.quickstart",
             f"--workdir={tmp_path}", "--layers=evonorm_b9"]
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=300, check=False, env=env)
  assert result.returncode == 2
  assert result.stderr.startswith("python -m evonorm_vision.quickstart: "
                                  "error: Unknown normalization-activation "
                                  "layer 'evonorm_b9'"), result.stderr[-2000:]
  assert result.stderr.count("\n") == 1, result.stderr[-2000:]
  verbose = subprocess.run(command, capture_output=True, text=True,
                           timeout=300, check=False,
                           env={**env, "EVONORM_VERBOSE": "1"})
  assert verbose.returncode == 2
  assert "Traceback" in verbose.stderr
  assert verbose.stderr.splitlines()[-1].startswith(
      "python -m evonorm_vision.quickstart: error: ")


@pytest.mark.parametrize("name", ["evonorm_efficientnet_b0_imagenet",
                                  "evonorm_mobilenetv2_imagenet",
                                  "evonorm_mnasnet_b1_imagenet"])
def test_one_config_value_selects_s0_on_every_network(name):
  """The paper ran EvoNorm-S0 on these networks: the experiment's defaults
  accept it (widths such as 24 or 40 use the largest divisor of 32 below)."""
  params = experiments.load_params(
      name, (), "task.model.norm_activation.type=evonorm_s0,"
      "task.model.input_size=[64,64,3]")
  model = task_factory.get_task(params.task).build_model()
  norms = [l for l in model._flatten_layers()  # pylint: disable=protected-access
           if isinstance(l, evonorm_layers.NormActivation)]
  assert norms and all(isinstance(l, evonorm_layers.EvoNormS0) for l in norms)
  assert {l.resolved_groups for l in norms} > {32}
