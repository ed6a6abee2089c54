"""Every backbone with BN-ReLU, EvoNorm-B0 and EvoNorm-S0 at every norm site."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.vision.configs import backbones as mg_backbone_configs
from official.vision.modeling.backbones import factory

import evonorm_layers
import evonorm_vision.backbones  # noqa: F401  (registers the backbones)
from evonorm_vision import norm_activation as norm_lib
from evonorm_vision.configs import backbones as backbone_configs

LAYERS = ["bn_relu", "evonorm_b0", "evonorm_s0"]
# name -> (backbone config, input size, groups that divide every width)
BACKBONES = {
    "resnet_v2_18_cifar": (backbone_configs.Backbone(
        type="resnet_v2", resnet_v2=backbone_configs.ResNetV2(
            model_id=18, stem_type="cifar")), 32),
    "resnet_v2_50": (backbone_configs.Backbone(
        type="resnet_v2", resnet_v2=backbone_configs.ResNetV2(model_id=50)),
                     64),
    "evonorm_resnet_18": (backbone_configs.Backbone(
        type="evonorm_resnet",
        evonorm_resnet=mg_backbone_configs.ResNet(model_id=18)), 64),
    "evonorm_resnet_50_d_se": (backbone_configs.Backbone(
        type="evonorm_resnet", evonorm_resnet=mg_backbone_configs.ResNet(
            model_id=50, stem_type="v1", resnetd_shortcut=True,
            se_ratio=0.25)), 64),
    "evonorm_efficientnet_b0": (backbone_configs.Backbone(
        type="evonorm_efficientnet",
        evonorm_efficientnet=mg_backbone_configs.EfficientNet(
            model_id="b0", se_ratio=0.25)), 64),
    "evonorm_mobilenet_v2": (backbone_configs.Backbone(
        type="evonorm_mobilenet",
        evonorm_mobilenet=backbone_configs.EvoNormMobileNet(
            model_id="MobileNetV2")), 64),
    "evonorm_mnasnet_b1": (backbone_configs.Backbone(
        type="evonorm_mobilenet",
        evonorm_mobilenet=backbone_configs.EvoNormMobileNet(
            model_id="MnasNetB1")), 64),
}
# 64x64 inputs for the stride-32 networks: at 32x32 their last stage is 1x1,
# where EvoNorm-B0 with 2 samples divides uncentered activations by the
# standard deviation of 2 values, and activations grow through the residual
# stack until they overflow (the layer's formula, not an implementation bug;
# at 2x2 or with more samples they stay O(10)).


def _build(name, layer, groups=8, **norm_overrides):
  config, size = BACKBONES[name]
  norm = norm_lib.NormActivation(type=layer, groups=groups, norm_momentum=0.9,
                                 norm_epsilon=1e-5, use_sync_bn=False,
                                 **norm_overrides)
  model = factory.build_backbone(
      input_specs=tf_keras.layers.InputSpec(shape=[None, size, size, 3]),
      backbone_config=config, norm_activation_config=norm)
  return model, size


def _all_layers(model):
  return list(model._flatten_layers(include_self=False, recursive=True))  # pylint: disable=protected-access


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_census_and_training_step(name, layer):
  model, size = _build(name, layer)
  layers = _all_layers(model)
  assert not [l for l in layers if isinstance(
      l, tf_keras.layers.BatchNormalization)], "Keras BatchNormalization left"
  norms = [l for l in layers if isinstance(l, evonorm_layers.NormActivation)]
  expected = evonorm_layers.get_norm_activation_factory(layer)
  assert norms and all(type(l) is expected for l in norms)
  assert all(l.built for l in norms), "a norm layer that is never called"
  assert any(not l.nonlinearity for l in norms) == (
      not name.startswith("resnet_v2")), "norm sites without activation"

  x = tf.random.stateless_normal([2, size, size, 3], seed=[0, 1])
  with tf.GradientTape() as tape:
    endpoints = model(x, training=True)
    loss = tf.add_n([tf.reduce_mean(tf.square(v))
                     for v in endpoints.values()])
  grads = tape.gradient(loss, model.trainable_variables)
  assert np.isfinite(loss.numpy())
  assert all(g is not None for g in grads)
  assert all(np.all(np.isfinite(g)) for g in grads)
  for level, spec in model.output_specs.items():
    assert endpoints[level].shape[1:] == spec[1:]


@pytest.mark.parametrize("ours, mg_config, size", [
    ("evonorm_resnet_50_d_se", mg_backbone_configs.Backbone(
        type="resnet", resnet=mg_backbone_configs.ResNet(
            model_id=50, stem_type="v1", resnetd_shortcut=True,
            se_ratio=0.25)), 64),
    ("evonorm_efficientnet_b0", mg_backbone_configs.Backbone(
        type="efficientnet", efficientnet=mg_backbone_configs.EfficientNet(
            model_id="b0", se_ratio=0.25)), 64),
    ("evonorm_mobilenet_v2", mg_backbone_configs.Backbone(
        type="mobilenet", mobilenet=mg_backbone_configs.MobileNet(
            model_id="MobileNetV2")), 64),
])
def test_same_architecture_as_model_garden(ours, mg_config, size):
  """With BN-ReLU, the registry versions have Model Garden's parameters."""
  model, _ = _build(ours, "bn_relu")
  reference = factory.build_backbone(
      input_specs=tf_keras.layers.InputSpec(shape=[None, size, size, 3]),
      backbone_config=mg_config,
      norm_activation_config=norm_lib.NormActivation())
  assert model.count_params() == reference.count_params()
  assert sorted(v.shape.as_list() for v in model.trainable_variables) == (
      sorted(v.shape.as_list() for v in reference.trainable_variables))
  assert {k: v.as_list() for k, v in model.output_specs.items()} == {
      k: v.as_list() for k, v in reference.output_specs.items()}


def test_resnet_v2_parameter_counts():
  """Backbone parameters (no classifier), as in the authors' v2 ResNets.

  ResNet-50: Keras' ResNet50V2 without top has 23,564,800, of which 19,008
  are conv biases that the authors' code (and this backbone) does not use.
  ResNet-18: 11,166,912 conv weights + 4,096 for the first group's 1x1
  projection (the authors' code projects in the first block of every group)
  + 3,904 BN channels x 4 (gamma, beta, moving mean and variance).
  """
  expected = {18: 11_166_912 + 4_096 + 3_904 * 4,
              50: 23_564_800 - 19_008}
  for depth, count in expected.items():
    model = evonorm_vision.backbones.resnet_v2.ResNetV2(depth)
    assert model.count_params() == count, depth


def test_groups_that_do_not_fit_are_an_error_before_training():
  with pytest.raises(ValueError, match=r"groups=32 does not divide the "
                     r"channel count.*evonorm_mobilenet-MobileNetV2.*"
                     r"\[16, 24, 144\] are not divisible.*largest: 8.*"
                     r"allow_group_fallback"):
    config, size = BACKBONES["evonorm_mobilenet_v2"]
    factory.build_backbone(
        input_specs=tf_keras.layers.InputSpec(shape=[None, size, size, 3]),
        backbone_config=config,
        norm_activation_config=norm_lib.NormActivation(type="evonorm_s0",
                                                       groups=32))
  model, _ = _build("evonorm_mobilenet_v2", "evonorm_s0", groups=32,
                    allow_group_fallback=True)
  groups = {l.resolved_groups for l in _all_layers(model)
            if isinstance(l, evonorm_layers.EvoNormS0)}
  assert {16, 24, 32} <= groups


def test_unknown_layer_name_fails_before_building():
  with pytest.raises(ValueError, match="Unknown normalization-activation "
                     "layer 'evonorm_x'"):
    _build("resnet_v2_18_cifar", "evonorm_x")


@pytest.mark.parametrize("name", ["resnet_v2_18_cifar", "evonorm_mnasnet_b1"])
def test_backbone_config_round_trip(name):
  model, size = _build(name, "evonorm_s0")
  clone = type(model).from_config(model.get_config())
  assert clone.count_params() == model.count_params()
  assert clone.get_config() == model.get_config()
