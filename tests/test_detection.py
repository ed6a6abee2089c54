"""Mask R-CNN with registry norms: census per component, Table 5 layers,
per-RoI fc norms, synchronized heads, the entry point, export and the
quickstart, on generated data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from official.core import exp_factory
from official.core import task_factory
from official.modeling import hyperparams

import evonorm_layers
from evonorm_detection import heads
from evonorm_detection import registry_imports  # noqa: F401  pylint: disable=unused-import
from evonorm_detection.data import shapes
from evonorm_model_garden import checkpoints
from evonorm_model_garden import experiments
from evonorm_vision.data import offline as offline_data
from tests import entry_points
from tests import layer_helpers
from tests.overrides import EAGER
from tests.conftest import NUM_LOGICAL_CPUS

QUICKSTART = "evonorm_maskrcnn_shapes_quickstart"
TABLE5_LAYERS = ["bn_relu", "bn_silu", "gn_relu", "evonorm_b0", "evonorm_s0"]
COMPONENTS = ("backbone", "decoder", "rpn_head", "detection_head",
              "mask_head")
# Tiny training: batches of 2, checkpoints every 2 steps.
FAST = ("task.train_data.global_batch_size=2,"
        "task.validation_data.global_batch_size=2,"
        "trainer.steps_per_loop=2,trainer.checkpoint_interval=2,"
        "trainer.summary_interval=2,trainer.validation_steps=2,"
        "trainer.validation_interval=2")


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("shapes"))
  shapes.write_shapes_dataset(path, {"train": 8, "val": 4})
  return path


def _data_override(data_dir):
  return (f"task.train_data.input_path={shapes.file_pattern(data_dir, 'train')},"
          "task.validation_data.input_path="
          f"{shapes.file_pattern(data_dir, 'val')},"
          f"task.annotation_file={shapes.annotation_file(data_dir, 'val')}")


def _norms(component):
  """The norm layers of a component (a layer, or a list: detection heads)."""
  parts = component if isinstance(component, (list, tuple)) or hasattr(
      component, "_storage") else [component]
  return [l for part in parts
          for l in part._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if evonorm_layers.is_normalization_layer(l)]


def _build(name, overrides):
  params = exp_factory.get_exp_config(name)
  params = hyperparams.override_params_dict(params, overrides, is_strict=True)
  return params, task_factory.get_task(params.task).build_model()


@pytest.mark.heavy
# One EvoNorm per model: the census is about the sites, which the layer
# choice does not change (every layer reaches every site: see
# test_forward_and_backward_with_each_table5_layer).
@pytest.mark.parametrize("name, overrides, layer", [
    ("evonorm_maskrcnn_r50fpn_coco", "task.model.input_size=[128,128,3]",
     "evonorm_b0"),
    ("evonorm_maskrcnn_spinenet96_coco",
     "task.model.input_size=[128,128,3],"
     "task.model.backbone.evonorm_spinenet.model_id=49", "evonorm_s0"),
], ids=["r50_fpn-evonorm_b0", "spinenet49-evonorm_s0"])
def test_census_per_component(name, overrides, layer):
  params, model = _build(name, f"{overrides},"
                         f"task.model.norm_activation.type={layer}")
  expected = evonorm_layers.get_norm_activation_constructor(layer)
  for component in COMPONENTS:
    part = getattr(model, component)
    if part is None:  # SpineNet has no decoder (Model Garden's "identity")
      assert component == "decoder" and "spinenet" in name
      continue
    norms = _norms(part)
    assert norms, component
    assert all(type(n) is expected for n in norms), (
        component, {type(n).__name__ for n in norms})
    assert all(n.built for n in norms), component
  # Sites without an activation: FPN outputs, SpineNet's last resample 1x1,
  # the last norm of residual branches and shortcuts.
  if model.decoder is not None:
    assert not any(n.nonlinearity for n in _norms(model.decoder))
  assert any(not n.nonlinearity for n in _norms(model.backbone))
  for component in ("rpn_head", "detection_head", "mask_head"):
    assert all(n.nonlinearity for n in _norms(getattr(model, component)))
  assert params.task.model.norm_activation.type == layer


@pytest.mark.parametrize("layer", TABLE5_LAYERS)
def test_forward_and_backward_with_each_table5_layer(layer, shapes_dir):
  """A training step of a small Mask R-CNN with every Table 5 layer, with
  the backbone's norms frozen (``bn_trainable: false``, the usual
  fine-tuning setup) and weight decay on kernels only."""
  params = experiments.load_params(
      QUICKSTART, (), f"{FAST},{_data_override(shapes_dir)},"
      f"task.model.norm_activation.type={layer},"
      "task.model.backbone.evonorm_resnet.bn_trainable=false")
  task = task_factory.get_task(params.task)
  model = task.build_model()
  expected = evonorm_layers.get_norm_activation_constructor(layer)
  for component in COMPONENTS:  # every site has the chosen layer
    norms = _norms(getattr(model, component))
    assert norms and all(type(n) is expected for n in norms), component
  backbone_norms = _norms(model.backbone)
  assert backbone_norms and not any(n.trainable for n in backbone_norms)
  trainable = {id(v) for v in model.trainable_variables}
  assert not any(id(v) in trainable for n in backbone_norms
                 for v in n.weights)
  assert all(n.trainable for c in COMPONENTS[1:]
             for n in _norms(getattr(model, c)))
  # L2 weight decay: one loss per convolution / dense kernel, none on norms.
  kernels = [l for l in model._flatten_layers()  # pylint: disable=protected-access
             if getattr(l, "kernel_regularizer", None) is not None]
  assert kernels and len(model.losses) == len(kernels)
  assert not any(isinstance(l, evonorm_layers.NormActivation)
                 for l in kernels)
  images, labels = next(iter(task.build_inputs(params.task.train_data)))
  with tf.GradientTape() as tape:
    outputs = model(images, image_shape=labels["image_info"][:, 1, :],
                    anchor_boxes=labels["anchor_boxes"],
                    gt_boxes=labels["gt_boxes"],
                    gt_classes=labels["gt_classes"],
                    gt_masks=labels["gt_masks"], training=True)
    losses = task.build_losses(outputs, labels, aux_losses=model.losses)
  grads = tape.gradient(losses["total_loss"], model.trainable_variables)
  assert np.isfinite(losses["total_loss"].numpy())
  assert all(np.isfinite(losses[k].numpy()) for k in (
      "rpn_score_loss", "frcnn_cls_loss", "mask_loss"))
  missing = [v.name for v, g in zip(model.trainable_variables, grads)
             if g is None]
  assert not missing, missing[:10]
  assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("layer", ["evonorm_b0", "evonorm_s0", "bn_relu",
                                   "gn_relu"])
def test_padded_rois_do_not_change_real_rois(layer):
  """Each RoI is its own instance in the fc norms: appending padding RoIs
  (zeros, as the RoI generator pads) leaves the real RoIs' outputs as they
  are, in inference for every layer and in training for batch-independent
  ones."""
  head = heads.DetectionHead(
      num_classes=3, num_convs=1, num_filters=8, num_fcs=2, fc_dims=16,
      norm_activation={"type": layer, "groups": 4})
  rng = np.random.default_rng(0)
  real = rng.normal(size=(2, 5, 7, 7, 8)).astype(np.float32)
  padded = np.concatenate([real, np.zeros((2, 3, 7, 7, 8), np.float32)], 1)
  trainings = [False] if evonorm_layers.get_norm_activation_constructor(
      layer).batch_dependent else [False, True]
  head(real, training=True)  # builds and moves the moving statistics
  for training in trainings:
    alone = head(real, training=training)
    with_padding = head(padded, training=training)
    for a, b in zip(alone, with_padding):
      np.testing.assert_allclose(b[:, :5], a, rtol=1e-5, atol=1e-6)
  norms = _norms(head)
  fc_norms = [n for n in norms if "fc" in n.name]
  assert fc_norms and all(n.layout.rank == 2 for n in fc_norms)


def test_synchronized_b0_head_equals_one_device_on_the_full_batch():
  strategy = tf.distribute.MirroredStrategy(
      [f"/cpu:{i}" for i in range(NUM_LOGICAL_CPUS)])
  args = dict(num_classes=3, num_convs=2, num_filters=8, upsample_factor=2)
  with strategy.scope():
    synced = heads.MaskHead(norm_activation={"type": "evonorm_b0",
                                             "synchronized": True}, **args)
  single = heads.MaskHead(norm_activation={"type": "evonorm_b0"}, **args)
  rng = np.random.default_rng(1)
  per_replica = 2
  features = rng.normal(size=(per_replica * NUM_LOGICAL_CPUS, 3, 6, 6, 8))
  classes = rng.integers(0, 3, (per_replica * NUM_LOGICAL_CPUS, 3))
  features, classes = features.astype(np.float32), classes.astype(np.int32)
  single([features, classes], training=True)
  with strategy.scope():
    strategy.run(lambda: synced([features[:per_replica],
                                 classes[:per_replica]], training=True))
  for v in synced.weights:
    v.assign(next(w for w in single.weights
                  if w.name.split("/", 1)[1] == v.name.split("/", 1)[1]))

  def shard(array):
    return layer_helpers.split_over_replicas(strategy, array, per_replica)

  @tf.function
  def step(x, c):
    return strategy.run(lambda x, c: synced([x, c], training=True),
                        args=(x, c))

  got = np.concatenate([v.numpy() for v in
                        step(shard(features), shard(classes)).values])
  want = single([features, classes], training=True).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert all(n.synchronized for n in _norms(synced))


def _train_flags(model_dir, overrides):
  return [f"--experiment={QUICKSTART}", "--mode=train_and_eval",
          f"--model_dir={model_dir}", f"--params_override={overrides}"]


def _train(model_dir, overrides):
  return subprocess.run(
      [sys.executable, "-m", "evonorm_vision.train",
       *_train_flags(model_dir, overrides)],
      capture_output=True, text=True, timeout=900, check=False)


def _latest_step(model_dir):
  latest = tf.train.latest_checkpoint(model_dir)
  return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.mark.heavy
def test_entry_point_trains_and_evaluates(shapes_dir, tmp_path):
  """The entry point on the detection experiment (its loop eager: the
  quickstart's test compiles it; resuming is the entry point's own,
  tested in test_model_garden)."""
  model_dir = str(tmp_path / "model")
  result = _train(model_dir, f"{FAST},{EAGER},{_data_override(shapes_dir)},"
                  "trainer.train_steps=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert _latest_step(model_dir) == 2
  tags = set()
  for path in tf.io.gfile.glob(os.path.join(model_dir, "*", "events.*")):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      tags |= {v.tag for v in event.summary.value}
  # COCO box and mask metrics from Model Garden's evaluator, and the losses.
  assert {"AP", "AP50", "APs", "ARmax100", "mask_AP", "mask_AP50",
          "total_loss", "mask_loss", "frcnn_cls_loss"} <= tags, tags
  with open(os.path.join(model_dir, "params.yaml")) as f:
    assert "evonorm_b0" in f.read()
  # Its checkpoint fits the model it was trained as (the heads, built at
  # their first call, included), and not one with another layer.
  params = experiments.load_params(QUICKSTART, (), FAST)
  checkpoints.check_checkpoint(model_dir, params)
  other = experiments.load_params(
      QUICKSTART, (), f"{FAST},task.model.norm_activation.type=evonorm_s0")
  with pytest.raises(ValueError, match=r"does not fit the model of this "
                     r"config \(layer evonorm_s0\): \d+ variable\(s\) differ, "
                     r"e\.g\. .*moving_variance is only in the checkpoint"):
    checkpoints.check_checkpoint(model_dir, other)


BAD_INPUT = {
    "missing_data": (
        "task.train_data.input_path=/nonexistent/train-*",
        r"No files match task.train_data.input_path='/nonexistent/train-\*'.*"
        r"create_coco_tf_record.py"),
    "missing_annotations": (
        "task.annotation_file=/nonexistent/instances_val.json",
        r"task.annotation_file='/nonexistent/instances_val.json' does not "
        r"exist"),
    "groups": (
        "task.model.norm_activation.type=evonorm_s0,"
        "task.model.norm_activation.allow_group_fallback=false,"
        "task.model.norm_activation.groups=12",
        r"groups=12 does not divide"),
    # Data that does not fit the config or each other ({root}: files the
    # fixture writes).
    "labels_outside_classes": (
        "task.model.num_classes=3",
        r"task.train_data.input_path: .*train-00000-of-\d+.tfrecord, record "
        r"\d+, has class label 3 outside \[0, 3\) \(task.model.num_classes="
        r"3, the background class 0 included\)"),
    "not_examples": (
        "task.train_data.input_path={root}/notes.tfrecord",
        r"notes.tfrecord is not a TFRecord file of examples"),
    "classification_records": (
        "task.validation_data.input_path={root}/digits-*.tfrecord",
        r"task.validation_data.input_path: .*digits-00000-of-00001.tfrecord, "
        r"record 0, is not a Model Garden detection example \(no "
        r"image/source_id, image/object/bbox/xmin, image/object/bbox/ymin\)"),
    "other_annotations": (
        "task.annotation_file={root}/other.json",
        r"task.annotation_file='.*other.json' does not describe the "
        r"validation records: image/source_id '\d+' \(task.validation_data."
        r"input_path: .*val-00000-of-\d+.tfrecord\) is not among its 2 "
        r"images"),
    "not_coco": (
        "task.annotation_file={root}/list.json",
        r"task.annotation_file='.*list.json' is not a COCO annotation file"),
    "one_channel": (
        "task.model.input_size=[128,128,1]",
        r"task.model.input_size=\[128, 128, 1\]: Model Garden's input "
        r"pipelines decode every image to 3 channels"),
}


@pytest.fixture(scope="session")  # see test_model_garden.digits_dir
def bad_input_outcomes(shapes_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_input")
  (root / "notes.tfrecord").write_text("not records")
  (root / "list.json").write_text("[]")
  (root / "other.json").write_text(json.dumps(
      {"images": [{"id": 900001}, {"id": 900002}], "annotations": [],
       "categories": []}))
  offline_data.write_records(str(root / "digits-00000-of-00001.tfrecord"),
                             [offline_data.example(np.zeros((8, 8), np.uint8),
                                                   0)])
  cases = {name: _train_flags(str(root / name),
                              f"{FAST},{_data_override(shapes_dir)},"
                              f"trainer.train_steps=2,"
                              f"{override.format(root=root)}")
           for name, (override, _) in BAD_INPUT.items()}
  # A learning rate of 1e8 from the first step.
  cases["diverges"] = [
      f"--experiment={QUICKSTART}", "--mode=train",
      f"--model_dir={root / 'diverges'}",
      f"--params_override={FAST},{EAGER},{_data_override(shapes_dir)},"
      "trainer.train_steps=2,"
      "trainer.optimizer_config.warmup.linear.warmup_steps=0,"
      "trainer.optimizer_config.learning_rate.stepwise.values=[1e8,1e8]"]
  return root, entry_points.run("evonorm_vision.train", cases)


@pytest.mark.xdist_group("detection_bad_input")
@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_before_training(bad_input_outcomes, case):
  root, outcomes = bad_input_outcomes
  result = outcomes[case]
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if ": error: " in l]
  assert len(errors) == 1, result.stderr[-3000:]
  assert __import__("re").search(BAD_INPUT[case][1], errors[0]), errors[0]
  assert not tf.io.gfile.glob(str(root / case / "ckpt-*"))


@pytest.mark.xdist_group("detection_bad_input")
def test_diverging_training_stops_in_one_line(bad_input_outcomes):
  """Mask R-CNN through the same trainer and check as classification: the
  layer, what was kept and what to try, and no traceback."""
  root, outcomes = bad_input_outcomes
  result = outcomes["diverges"]
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  (line,) = [l for l in result.stderr.splitlines() if ": error: " in l]
  assert __import__("re").search(
      r"^python -m evonorm_vision.train: error: training diverged with "
      r"task.model.norm_activation.type=evonorm_b0 \(The loss value is .*\); "
      r"no checkpoint was written before it. Try a lower learning rate", line
  ), line
  assert not tf.io.gfile.glob(str(root / "diverges" / "ckpt-*"))


@pytest.mark.heavy
def test_quickstart_trains_evaluates_exports_and_draws(tmp_path):
  """The README's detection quickstart, shrunken to a few steps; its
  SavedModel (Model Garden's detection serving module) reloads and returns
  detections of the right shapes."""
  workdir = str(tmp_path / "quickstart")
  result = subprocess.run(
      [sys.executable, "-m", "evonorm_detection.quickstart",
       f"--workdir={workdir}", "--steps=2",
       "--params_override=task.train_data.global_batch_size=8,"
       "task.validation_data.global_batch_size=8,"
       "trainer.steps_per_loop=2,trainer.validation_steps=2"],
      capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  row = [l for l in result.stdout.splitlines()
         if l.startswith("| evonorm_b0 |")]
  assert len(row) == 1, result.stdout
  cells = [c.strip() for c in row[0].strip("|").split("|")]
  assert -1.0 <= float(cells[1]) <= 1.0 and -1.0 <= float(cells[2]) <= 1.0
  found, objects = map(int, cells[3].split("/"))
  with open(shapes.annotation_file(os.path.join(workdir, "data"))) as f:
    assert objects == len(json.load(f)["annotations"]) and found <= objects
  # The class confusion over every validation object, one row per class.
  for name in ("rectangle", "ellipse", "triangle", "(no object)"):
    assert any(l.startswith(f"| {name} |") for l in result.stdout.splitlines())
  assert os.path.getsize(os.path.join(workdir, "predictions.png")) > 0
  assert "train | step" not in result.stdout  # logs go to train.log
  with open(shapes.annotation_file(os.path.join(workdir, "data"))) as f:
    assert len(json.load(f)["images"]) == shapes.SPLITS["val"]

  params = experiments.load_params(QUICKSTART, (), "")
  served = tf.saved_model.load(os.path.join(
      workdir, "export", "evonorm_b0")).signatures["serving_default"]
  (input_name,) = served.structured_input_signature[1]
  images = np.random.default_rng(2).integers(0, 255, (2, 128, 128, 3),
                                             np.uint8)
  outputs = served(**{input_name: tf.constant(images)})
  detections = params.task.model.detection_generator.max_num_detections
  mask_size = (params.task.model.mask_roi_aligner.crop_size *
               params.task.model.mask_head.upsample_factor)
  assert outputs["detection_boxes"].shape == (2, detections, 4)
  assert outputs["detection_scores"].shape == (2, detections)
  assert outputs["detection_classes"].shape == (2, detections)
  assert outputs["num_detections"].shape == (2,)
  assert outputs["detection_masks"].shape == (2, detections, mask_size,
                                              mask_size)
  assert outputs["image_info"].shape == (2, 4, 2)
  # The SavedModel serves the trained model: every variable of the
  # checkpoint, the heads' lazily built norms included, is in the export
  # with its trained value (a deferred restore once left them at init).
  trained = tf.train.load_checkpoint(tf.train.latest_checkpoint(
      os.path.join(workdir, "evonorm_b0")))
  exported = tf.train.load_checkpoint(os.path.join(
      workdir, "export", "evonorm_b0", "variables", "variables"))

  def values(reader, keep):
    return {(v.dtype.str, v.shape, v.tobytes()): k for k, v in (
        (k, np.asarray(reader.get_tensor(k)))
        for k in reader.get_variable_to_shape_map()
        if k.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and keep(k))}

  model_values = values(trained, lambda k: not k.startswith(
      ("optimizer", "global_step", "save_counter")) and (
          "OPTIMIZER_SLOT" not in k))
  exported_values = values(exported, lambda k: True)
  missing = sorted(k for v, k in model_values.items()
                   if v not in exported_values)
  assert any("rpn_head/_norms" in k for k in model_values.values())
  assert not missing, missing[:10]


def test_one_box_per_object_and_the_class_confusion():
  """Class-agnostic NMS keeps the best of overlapping boxes whatever their
  classes; matching counts found objects, their classes, misses and false
  detections (checked by hand on a small case)."""
  from evonorm_detection import predictions  # pylint: disable=g-import-not-at-top
  # Image 0: an ellipse (class 2) detected as ellipse 0.9 and triangle 0.7
  # (the same place), a rectangle detected as triangle 0.8, a detection at
  # 0.3 (below the threshold) and one on empty background at 0.6.
  boxes = np.array([[[10, 10, 50, 50], [12, 11, 50, 52], [60, 60, 100, 90],
                     [0, 0, 5, 5], [100, 0, 120, 20]]], np.float32) * 2
  outputs = {
      "num_detections": np.array([5]),
      "detection_boxes": boxes,  # in the resized (2x) image
      "detection_scores": np.array([[0.9, 0.7, 0.8, 0.3, 0.6]]),
      "detection_classes": np.array([[2, 3, 3, 1, 1]]),
      "detection_masks": np.ones((1, 5, 4, 4), np.float32),
      "image_info": np.array([[[128, 128], [256, 256], [2, 2], [0, 0]]],
                             np.float32)}
  kept = predictions.kept_detections(outputs, 0)
  assert [(d["category"], round(d["score"], 2)) for d in kept] == [
      (2, 0.9), (3, 0.8), (1, 0.6)]
  np.testing.assert_allclose(kept[0]["box"], [10, 10, 50, 50])
  truths = [[{"category": 2, "box": np.array([10., 10., 50., 50.])},
             {"category": 1, "box": np.array([60., 60., 100., 90.])},
             {"category": 3, "box": np.array([0., 100., 30., 127.])}]]
  counts = predictions.confusion(truths, [kept])
  want = np.zeros((4, 4), np.int64)
  want[1, 1] = 1  # the ellipse, found as an ellipse
  want[0, 2] = 1  # the rectangle, found as a triangle
  want[2, 3] = 1  # the triangle, missed
  want[3, 0] = 1  # a rectangle where there is nothing
  np.testing.assert_array_equal(counts, want)
  summary = predictions.confusion_summary(counts)
  assert summary == {"objects": 3, "found": 2, "correct_class": 1,
                     "recall": 2 / 3, "class_accuracy": 0.5,
                     "false_detections": 1}
  table = predictions.confusion_table(counts)
  assert table[2] == "| rectangle | 0 | 0 | 1 | 0 |"
  assert table[-1] == "| (no object) | 1 | 0 | 0 | 0 |"
