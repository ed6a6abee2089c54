"""Whole models' training steps compiled with XLA, as on a TPU.

On a TPU every training step runs under XLA; here the same steps run with
``jit_compile=True`` on the CPU (where the layers leave their fused C++
kernels for the composite formulas, which XLA compiles) and are compared
with TensorFlow's graph mode: a Model Garden classifier, a tiny Mask R-CNN
(ResNet-FPN and SpineNet) and a tiny BigGAN-deep generator, with EvoNorm-B0
and S0, in float32 and under ``mixed_bfloat16``, the TPU's default policy.

Gradients are compared relative to the largest gradient of the model, not
each to itself: a norm followed by another normalization is invariant to
the scale of its gamma, whose true gradient is about zero and whose
computed one is rounding noise in either mode.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.core import task_factory
from official.vision.modeling.backbones import factory as backbone_factory

from evonorm_detection.data import shapes
from evonorm_gan import models as gan_models
from evonorm_model_garden import experiments

LAYERS = ["evonorm_b0", "evonorm_s0"]
POLICIES = ["float32", "mixed_bfloat16"]
# (loss, gradients) tolerances relative to the loss and the largest gradient.
TOLERANCE = {"float32": (1e-4, 1e-3), "mixed_bfloat16": (2e-2, 5e-2)}


@pytest.fixture
def policy(request):
  tf_keras.mixed_precision.set_global_policy(request.param)
  yield request.param
  tf_keras.mixed_precision.set_global_policy("float32")


def _graph_and_xla(loss_fn, variables, unconnected="none"):
  """(loss, gradients) of ``loss_fn`` in graph mode and compiled by XLA."""

  def step():
    with tf.GradientTape() as tape:
      loss = tf.cast(loss_fn(), tf.float32)
    return loss, tape.gradient(loss, variables,
                               unconnected_gradients=unconnected)

  return tf.function(step)(), tf.function(step, jit_compile=True)()


def _assert_close(graph, xla, policy):
  (loss, grads), (xla_loss, xla_grads) = graph, xla
  loss_tol, grad_tol = TOLERANCE[policy]
  assert np.isfinite(loss.numpy()) and np.isfinite(xla_loss.numpy())
  np.testing.assert_allclose(xla_loss.numpy(), loss.numpy(), rtol=loss_tol)
  assert all(g is not None for g in grads) and len(grads) == len(xla_grads)
  grads, xla_grads = ([tf.convert_to_tensor(g) for g in gs]  # embeddings'
                      for gs in (grads, xla_grads))
  largest = max(float(tf.reduce_max(tf.abs(tf.cast(g, tf.float32))))
                for g in grads)
  worst = max(float(tf.reduce_max(tf.abs(tf.cast(a, tf.float32) -
                                         tf.cast(b, tf.float32))))
              for a, b in zip(grads, xla_grads))
  assert worst <= grad_tol * largest, (worst, largest)


@pytest.mark.heavy
# Each layer and each policy once (the classifier runs all four pairs).
@pytest.mark.parametrize("layer, policy", [
    ("evonorm_b0", "float32"), ("evonorm_s0", "mixed_bfloat16")],
                         indirect=["policy"])
def test_classifier_step(layer, policy):
  params = experiments.load_params("evonorm_resnet_digits", (), ",".join([
      f"task.model.norm_activation.type={layer}",
      "task.model.norm_activation.groups=4",
      "task.model.backbone.resnet_v2.width_multiplier=0.125",
      "task.model.backbone.resnet_v2.model_id=18",
      "task.model.input_size=[16,16,3]"]))
  task = task_factory.get_task(params.task)
  tf_keras.utils.set_random_seed(0)
  model = task.build_model()
  rng = np.random.default_rng(0)
  images = tf.constant(rng.normal(size=(4, 16, 16, 3)).astype(np.float32))
  labels = tf.one_hot(rng.integers(0, 10, 4), 10)

  def loss():
    # As Model Garden's train_step: the losses in float32.
    outputs = tf.cast(model(images, training=True), tf.float32)
    return task.build_losses(labels, outputs, aux_losses=model.losses)

  _assert_close(*_graph_and_xla(loss, model.trainable_variables), policy)


@pytest.mark.heavy
# Each layer and each policy once (the classifier runs all four pairs).
@pytest.mark.parametrize("layer, policy", [
    ("evonorm_b0", "float32"), ("evonorm_s0", "mixed_bfloat16")],
                         indirect=["policy"])
def test_biggan_deep_generator_step(layer, policy):
  tf_keras.utils.set_random_seed(0)
  generator = gan_models.build(gan_models.Generator(
      resolution=32, ch=4, num_classes=10, z_dim=16, shared_dim=16,
      attention_resolutions=(), norm_activation=layer), batch_size=4)
  rng = np.random.default_rng(0)
  z = tf.constant(rng.normal(size=(4, 16)).astype(np.float32))
  y = tf.constant(rng.integers(0, 10, 4).astype(np.int32))
  target = tf.constant(rng.normal(size=(4, 32, 32, 3)).astype(np.float32))

  def loss():
    images = tf.cast(generator([z, y], training=True), tf.float32)
    return tf.reduce_mean(tf.square(images - target))

  _assert_close(*_graph_and_xla(loss, generator.trainable_variables), policy)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("shapes"))
  shapes.write_shapes_dataset(path, {"train": 2, "val": 2})
  return path


MASK_RCNN = {
    "resnet_fpn": ("evonorm_maskrcnn_shapes_quickstart", "evonorm_b0", ""),
    "spinenet": ("evonorm_maskrcnn_spinenet96_coco", "evonorm_s0",
                 "task.model.input_size=[128,128,3],"
                 "task.model.backbone.evonorm_spinenet.model_id=49S,"
                 "task.model.num_classes=4,"),
}


def _mask_rcnn_params(experiment, layer, overrides, shapes_dir):
  return experiments.load_params(experiment, (), (
      f"{overrides}task.model.norm_activation.type={layer},"
      "task.model.norm_activation.use_sync_bn=false,"
      "task.train_data.global_batch_size=2,"
      f"task.train_data.input_path={shapes.file_pattern(shapes_dir, 'train')}"))


def _mask_rcnn(network, shapes_dir):
  params = _mask_rcnn_params(*MASK_RCNN[network], shapes_dir)
  task = task_factory.get_task(params.task)
  tf_keras.utils.set_random_seed(0)
  model = task.build_model()
  images, labels = next(iter(task.build_inputs(params.task.train_data)))
  return task, model, images, labels


@pytest.mark.heavy
def test_mask_rcnn_step(shapes_dir):
  """ResNet-FPN Mask R-CNN with EvoNorm-B0: the region proposal losses
  (deterministic: their targets come from the input pipeline) and their
  gradients equal graph mode; the whole step's loss, with the box and mask
  heads on sampled regions (XLA's random numbers are not TensorFlow's), is
  finite."""
  task, model, images, labels = _mask_rcnn("resnet_fpn", shapes_dir)

  def losses():
    outputs = model(images, image_shape=labels["image_info"][:, 1, :],
                    anchor_boxes=labels["anchor_boxes"],
                    gt_boxes=labels["gt_boxes"],
                    gt_classes=labels["gt_classes"],
                    gt_masks=labels["gt_masks"], training=True)
    return task.build_losses(outputs, labels, aux_losses=model.losses)

  def rpn_loss():
    found = losses()
    return found["rpn_score_loss"] + found["rpn_box_loss"]

  # The box and mask heads' gradients are zero (not reached).
  _assert_close(*_graph_and_xla(rpn_loss, model.trainable_variables,
                                unconnected="zero"), "float32")
  total = tf.function(lambda: losses()["total_loss"], jit_compile=True)()
  assert np.isfinite(total.numpy())


@pytest.mark.heavy
def test_spinenet_backbone_step(shapes_dir):
  """SpineNet-49S with EvoNorm-S0 at every site, as Mask R-CNN's backbone
  (built by Model Garden's backbone factory from the detection config, on
  the detection pipeline's images; the heads and their compiled step:
  test_mask_rcnn_step; the whole detector compiled takes minutes on this
  CPU)."""
  experiment, layer, overrides = MASK_RCNN["spinenet"]
  params = _mask_rcnn_params(experiment, layer, overrides, shapes_dir)
  images, _ = next(iter(task_factory.get_task(params.task).build_inputs(
      params.task.train_data)))
  model = params.task.model
  tf_keras.utils.set_random_seed(0)
  backbone = backbone_factory.build_backbone(
      input_specs=tf_keras.layers.InputSpec(shape=[None] + model.input_size),
      backbone_config=model.backbone,
      norm_activation_config=model.norm_activation)

  def loss():
    features = backbone(images, training=True)
    return tf.add_n([tf.reduce_mean(tf.square(tf.cast(f, tf.float32)))
                     for f in features.values()])

  _assert_close(*_graph_and_xla(loss, backbone.trainable_variables),
                "float32")
