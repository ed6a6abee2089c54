"""Every backbone with BN-ReLU, EvoNorm-B0 and EvoNorm-S0 at every norm site."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.vision.configs import backbones as mg_backbone_configs
from official.vision.modeling.backbones import factory

import evonorm_layers
import evonorm_model_garden.backbones  # noqa: F401  (registers the backbones)
from evonorm_model_garden import norm_activation as norm_lib
from evonorm_model_garden import norm_sites
from evonorm_model_garden.backbones import configs as backbone_configs

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
  norm = norm_lib.NormActivationConfig(type=layer, groups=groups, norm_momentum=0.9,
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
  expected = evonorm_layers.get_norm_activation_constructor(layer)
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
      norm_activation_config=norm_lib.NormActivationConfig())
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
    model = evonorm_model_garden.backbones.resnet_v2.ResNetV2(depth)
    assert model.count_params() == count, depth


def test_groups_that_do_not_fit_fall_back_or_are_an_error_on_demand(
    caplog):
  # Default: the authors' largest-divisor fallback, reported in one line.
  with caplog.at_level("WARNING"):
    model, _ = _build("evonorm_mobilenet_v2", "evonorm_s0", groups=32)
  groups = {l.resolved_groups for l in _all_layers(model)
            if isinstance(l, evonorm_layers.EvoNormS0)}
  assert {16, 24, 32} <= groups
  reports = [r.getMessage() for r in caplog.records
             if "does not divide" in r.getMessage()]
  assert len(reports) == 1, reports
  assert "[16, 24, 144]" in reports[0] and "24: 24 groups" in reports[0]
  # Strict: an error before training, naming a group count that fits.
  with pytest.raises(ValueError, match=r"groups=32 does not divide the "
                     r"channel count.*evonorm_mobilenet-MobileNetV2.*"
                     r"\[16, 24, 144\] are not divisible.*largest: 8.*"
                     r"allow_group_fallback"):
    _build("evonorm_mobilenet_v2", "evonorm_s0", groups=32,
           allow_group_fallback=False)


def test_groups_check_covers_searched_layers():
  from evonorm_layers.search import known_layers  # pylint: disable=g-import-not-at-top
  from evonorm_layers.search.layer import register_searched_layer  # pylint: disable=g-import-not-at-top
  register_searched_layer("searched_s0_for_groups_test",
                          known_layers.KNOWN_GRAPHS["evonorm_s0"],
                          overwrite=True)
  try:
    with pytest.raises(ValueError, match=r"\[16, 24, 144\] are not "
                       "divisible"):
      _build("evonorm_mobilenet_v2", "searched_s0_for_groups_test",
             groups=32, allow_group_fallback=False)
    # A searched B-series layer has no group statistic: nothing to check.
    register_searched_layer("searched_b0_for_groups_test",
                            known_layers.KNOWN_GRAPHS["evonorm_b0"],
                            overwrite=True)
    _build("evonorm_mobilenet_v2", "searched_b0_for_groups_test", groups=32,
           allow_group_fallback=False)
  finally:
    evonorm_layers.unregister_norm_activation("searched_s0_for_groups_test")
    evonorm_layers.unregister_norm_activation("searched_b0_for_groups_test")


# Residual branches: one per block of the ResNets; MBConv blocks have one
# only when stride 1 and in == out filters (the repeats after the first).
RESIDUAL_BRANCHES = {"resnet_v2_18_cifar": 8, "resnet_v2_50": 16,
                     "evonorm_resnet_18": 8, "evonorm_resnet_50_d_se": 16,
                     "evonorm_efficientnet_b0": 9, "evonorm_mobilenet_v2": 10,
                     "evonorm_mnasnet_b1": 10}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_zero_init_residual_starts_every_block_as_the_identity(name):
  model, size = _build(name, "evonorm_b0", zero_init_residual=True)
  norms = [l for l in _all_layers(model)
           if isinstance(l, evonorm_layers.NormActivation)]
  zeroed = [l for l in norms if not np.any(l.gamma.numpy())]
  assert len(zeroed) == RESIDUAL_BRANCHES[name]
  assert all(np.all(l.gamma.numpy() == 1.0) for l in norms
             if l not in zeroed)
  plain, _ = _build(name, "evonorm_b0")
  assert all(np.all(l.gamma.numpy() == 1.0) for l in _all_layers(plain)
             if isinstance(l, evonorm_layers.NormActivation))
  # Every residual branch outputs zero: the endpoints do not change when
  # the first convolution of every residual branch is rescaled.
  x = tf.random.stateless_normal([2, size, size, 3], seed=[3, 4])
  before = model(x, training=False)
  branch_convs = [l._conv1 for l in _all_layers(model)  # pylint: disable=protected-access
                  if isinstance(l, norm_sites.RegistryNormSites)
                  and l.has_residual_branch()]
  branch_convs += [l for l in _all_layers(model)
                   if l.name.endswith("_conv1")]  # resnet_v2
  assert len(branch_convs) == RESIDUAL_BRANCHES[name]
  for conv in branch_convs:
    conv.weights[0].assign(conv.weights[0] * 3.0)
  after = model(x, training=False)
  for level in before:
    np.testing.assert_allclose(after[level], before[level], rtol=1e-5,
                               atol=1e-5)


def test_frozen_norms_include_the_resnet_stem():
  config, size = BACKBONES["evonorm_resnet_50_d_se"]
  config = backbone_configs.Backbone(
      type="evonorm_resnet", evonorm_resnet=mg_backbone_configs.ResNet(
          model_id=50, stem_type="v1", bn_trainable=False))
  model = factory.build_backbone(
      input_specs=tf_keras.layers.InputSpec(shape=[None, size, size, 3]),
      backbone_config=config,
      norm_activation_config=norm_lib.NormActivationConfig(type="evonorm_b0"))
  norms = [l for l in _all_layers(model)
           if isinstance(l, evonorm_layers.NormActivation)]
  assert norms and not [l.name for l in norms if l.trainable]
  assert not [v.name for v in model.trainable_variables
              if "norm" in v.name or "gamma" in v.name]


@pytest.mark.parametrize("name", ["evonorm_resnet_18",
                                  "evonorm_efficientnet_b0",
                                  "evonorm_mobilenet_v2", "resnet_v2_50"])
def test_channels_first_reaches_every_norm(name):
  config, _ = BACKBONES[name]
  tf_keras.backend.set_image_data_format("channels_first")
  try:
    model = type(factory.build_backbone(
        input_specs=tf_keras.layers.InputSpec(shape=[None, 3, 64, 64]),
        backbone_config=config,
        norm_activation_config=norm_lib.NormActivationConfig(type="evonorm_s0",
                                                       groups=8)))
    # Constructed directly, without an axis in norm_activation.
    kwargs = dict(input_specs=tf_keras.layers.InputSpec(
        shape=[None, 3, 64, 64]), norm_activation={"type": "evonorm_s0",
                                                  "groups": 8})
    backbone_args = {"evonorm_resnet_18": dict(model_id=18),
                     "evonorm_efficientnet_b0": dict(model_id="b0"),
                     "evonorm_mobilenet_v2": dict(model_id="MobileNetV2"),
                     "resnet_v2_50": dict(model_id=50)}[name]
    direct = model(**kwargs, **backbone_args)
  finally:
    tf_keras.backend.set_image_data_format("channels_last")
  axes = {l.name: l.axis for l in _all_layers(direct)
          if isinstance(l, evonorm_layers.NormActivation)}
  assert axes and set(axes.values()) == {1}, axes


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
