"""The norm-site mechanism on Model Garden layers that keep their norms in
lists (detection heads) and nested lists (the RPN head, per level)."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.vision.modeling.heads import dense_prediction_heads
from official.vision.modeling.heads import instance_heads

import evonorm_layers
from evonorm_model_garden.norm_sites import NormSite
from evonorm_model_garden.norm_sites import RegistryNormSites


class DetectionHead(RegistryNormSites, instance_heads.DetectionHead):
  NORM_SITES = (NormSite("_conv_norms", "config:activation", "_activation"),
                NormSite("_fc_norms", "config:activation", "_activation"))


class RPNHead(RegistryNormSites, dense_prediction_heads.RPNHead):
  NORM_SITES = (NormSite("_norms", "config:activation", "_activation"),)


_HEAD_ARGS = dict(norm_momentum=0.9, norm_epsilon=1e-3)


def _detection_heads(norm):
  args = dict(num_classes=3, num_convs=2, num_filters=8, num_fcs=1,
              fc_dims=16, **_HEAD_ARGS)
  ours = DetectionHead(norm_activation=norm, **args)
  return ours, instance_heads.DetectionHead(**args)


def _rpn_heads(norm):
  args = dict(min_level=2, max_level=3, num_anchors_per_location=3,
              num_convs=2, num_filters=8, use_separable_conv=False,
              **_HEAD_ARGS)
  ours = RPNHead(norm_activation=norm, **args)
  return ours, dense_prediction_heads.RPNHead(**args)


_ROIS = np.random.default_rng(0).normal(size=(2, 5, 7, 7, 8)).astype(
    np.float32)
_LEVELS = {str(level): np.random.default_rng(level).normal(
    size=(2, 32 // 2**level, 32 // 2**level, 8)).astype(np.float32)
           for level in (2, 3)}
HEADS = {"detection": (_detection_heads, _ROIS),
         "rpn": (_rpn_heads, _LEVELS)}


def _norms(layer):
  return [l for l in layer._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if evonorm_layers.is_normalization_layer(l)]


@pytest.mark.parametrize("head", sorted(HEADS))
def test_bn_relu_sites_equal_model_garden(head):
  make, inputs = HEADS[head]
  ours, reference = make({"type": "bn_relu", "epsilon": 1e-3,
                          "momentum": 0.9})
  ours(inputs)
  reference(inputs)
  assert not [l for l in _norms(ours)
              if isinstance(l, tf_keras.layers.BatchNormalization)]
  assert len(_norms(ours)) == len(_norms(reference))
  # Same layer names at the same sites, so the weights line up.
  assert ([l.name for l in _norms(ours)] ==
          [l.name for l in _norms(reference)])
  # Norms are replaced after build, so the weights are listed in another
  # order: match them by name.
  def key(variable):  # without the head's own (uniquified) name
    return variable.name.split("/", 1)[1]

  values = {key(v): v for v in reference.weights}
  assert sorted(values) == sorted(key(v) for v in ours.weights)
  for variable in ours.weights:
    variable.assign(values[key(variable)])
  # Inference first: in training, Keras' BatchNormalization moves its
  # moving variance towards the Bessel-corrected batch variance, the
  # library's towards the population variance (as the paper's layers).
  for training in (False, True):
    got = tf.nest.flatten(ours(inputs, training=training))
    want = tf.nest.flatten(reference(inputs, training=training))
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_listed_norm_is_replaced_and_called(head):
  make, inputs = HEADS[head]
  ours, _ = make({"type": "evonorm_s0", "groups": 4})
  outputs = ours(inputs, training=True)
  norms = _norms(ours)
  assert norms and all(isinstance(l, evonorm_layers.EvoNormS0) for l in norms)
  assert all(l.built and l.nonlinearity for l in norms)
  assert ours._activation is tf_keras.activations.linear  # pylint: disable=protected-access
  assert all(np.all(np.isfinite(o)) for o in tf.nest.flatten(outputs))
  if head == "rpn":  # one norm per level and conv, in nested lists
    assert [len(level) for level in ours._norms] == [2, 2]  # pylint: disable=protected-access
