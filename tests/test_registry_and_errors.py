"""The registry, the weight-decay helper and error messages for bad input."""

import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import evonorm_layers
from tests import layer_helpers

PAPER_LAYERS = [
    "bn_relu", "bn_silu", "gn_relu", "gn_silu", "frn_tlu", "ln_relu",
    "pixelnorm_relu", "rs_rej", "evonorm_b0", "evonorm_b1", "evonorm_b2",
    "evonorm_s0", "evonorm_s1", "evonorm_s2"
]


def test_every_paper_layer_is_registered():
  assert set(PAPER_LAYERS) <= set(evonorm_layers.available_norm_activations())


@pytest.mark.parametrize("spelling", ["evonorm_b0", "EvoNorm-B0", "EVONORMB0",
                                      "evonorm b0"])
def test_names_are_normalized(spelling):
  assert isinstance(evonorm_layers.get_norm_activation(spelling),
                    evonorm_layers.EvoNormB0)


def test_each_call_returns_a_new_layer_with_the_arguments():
  a = evonorm_layers.get_norm_activation("evonorm_s0", groups=8, epsilon=1e-3)
  b = evonorm_layers.get_norm_activation("evonorm_s0")
  assert a is not b
  assert (a.groups, a.epsilon, b.groups, b.epsilon) == (8, 1e-3, 32, 1e-5)
  first = evonorm_layers.get_norm_activation("bn_relu",
                                             data_format="channels_first")
  assert first.axis == 1


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="Unknown normalization-activation "
                     "layer 'evonorm_b9'.*evonorm_b0.*evonorm_s0"):
    evonorm_layers.get_norm_activation("evonorm_b9")


def test_unknown_argument_names_the_accepted_ones():
  with pytest.raises(TypeError, match=r"'evonorm_b0' does not take "
                     r"argument\(s\) \['groups'\].*momentum"):
    evonorm_layers.get_norm_activation("evonorm_b0", groups=8)


def test_registering_a_new_layer_makes_it_available_everywhere():

  class Identity(tf_keras.layers.Layer):

    def __init__(self, axis=-1, **kwargs):
      super().__init__(**kwargs)
      self.axis = axis

    def call(self, x):
      return x

  evonorm_layers.register_norm_activation("my_identity", Identity,
                                          aliases=("ident",))
  try:
    assert "my_identity" in evonorm_layers.available_norm_activations()
    assert isinstance(evonorm_layers.get_norm_activation("IDENT"), Identity)
    with pytest.raises(ValueError, match="already registered"):
      evonorm_layers.register_norm_activation("my-identity", Identity)
    evonorm_layers.register_norm_activation("my_identity", Identity,
                                            overwrite=True)
  finally:
    evonorm_layers.unregister_norm_activation("my_identity")
  assert "my_identity" not in evonorm_layers.available_norm_activations()
  with pytest.raises(ValueError, match="Unknown"):
    evonorm_layers.get_norm_activation("ident")


@pytest.mark.parametrize("name", layer_helpers.ALL_LAYERS)
def test_get_config_round_trip(name):
  kwargs = layer_helpers.layer_kwargs(name, axis=1, nonlinearity=False,
                                      name="my_norm")
  if "synchronized" in evonorm_layers.accepted_arguments(name):
    kwargs["synchronized"] = True
  layer = evonorm_layers.get_norm_activation(name, **kwargs)
  config = layer.get_config()
  for key, value in kwargs.items():
    assert config[key] == value, key
  clone = type(layer).from_config(config)
  assert clone.get_config() == config
  serialized = tf_keras.saving.serialize_keras_object(layer)
  revived = tf_keras.saving.deserialize_keras_object(serialized)
  assert type(revived) is type(layer) and revived.get_config() == config


def test_normalization_variables_for_weight_decay():
  inputs = tf_keras.Input((8, 8, 3))
  x = tf_keras.layers.Conv2D(8, 3, name="conv")(inputs)
  x = evonorm_layers.EvoNormB0(name="norm")(x)
  x = tf_keras.layers.BatchNormalization(name="keras_bn")(x)
  x = tf_keras.layers.GlobalAveragePooling2D()(x)
  model = tf_keras.Model(inputs, tf_keras.layers.Dense(2, name="head")(x))
  norm = {v.name for v in evonorm_layers.normalization_variables(model)}
  assert norm == {
      "norm/gamma:0", "norm/beta:0", "norm/v1:0", "norm/moving_variance:0",
      "keras_bn/gamma:0", "keras_bn/beta:0", "keras_bn/moving_mean:0",
      "keras_bn/moving_variance:0"}
  decayed = [v.name for v in evonorm_layers.decayed_variables(model)]
  assert decayed == ["conv/kernel:0", "conv/bias:0", "head/kernel:0",
                     "head/bias:0"]
  expected = 1e-4 * sum(
      0.5 * np.sum(np.square(v.numpy()))
      for v in evonorm_layers.decayed_variables(model))
  np.testing.assert_allclose(evonorm_layers.l2_weight_decay(model, 1e-4),
                             expected, rtol=1e-5)


# -- errors ------------------------------------------------------------------

def _raises(error, pattern, fn):
  with pytest.raises(error, match=pattern):
    fn()


def test_unknown_channel_dimension_at_build():
  _raises(ValueError, r"EvoNormB0.*channel dimension \(axis -1\) must be "
          r"known.*\[None, 4, 4, None\]",
          lambda: evonorm_layers.EvoNormB0().build((None, 4, 4, None)))


@pytest.mark.parametrize("groups", [0, -3])
def test_groups_below_one(groups):
  _raises(ValueError, r"EvoNormS0.*`groups` must be at least 1\. "
          rf"Received: groups={groups}",
          lambda: evonorm_layers.EvoNormS0(groups=groups))


def test_groups_of_wrong_type():
  _raises(TypeError, r"GroupNormReLU.*`groups` must be a positive int",
          lambda: evonorm_layers.GroupNormReLU(groups=2.5))


@pytest.mark.parametrize("axis, pattern", [
    (0, r"cannot be 0, which is the batch axis"),
    ([1, 2], r"exactly one channel axis"),
])
def test_invalid_axis_at_construction(axis, pattern):
  _raises(ValueError, r"EvoNormS0.*" + pattern,
          lambda: evonorm_layers.EvoNormS0(axis=axis))


def test_axis_of_wrong_type():
  _raises(TypeError, r"`axis` must be an int",
          lambda: evonorm_layers.EvoNormB0(axis="channels_last"))


@pytest.mark.parametrize("axis, pattern", [
    (4, r"`axis`=4 is out of range for inputs of rank 4"),
    (-4, r"`axis`=-4 points at the batch axis"),
])
def test_invalid_axis_at_build(axis, pattern):
  _raises(ValueError, r"EvoNormB0.*" + pattern,
          lambda: evonorm_layers.EvoNormB0(axis=axis).build((2, 4, 4, 8)))


def test_invalid_data_format():
  _raises(ValueError, r"`data_format` must be one of \['channels_first', "
          r"'channels_last'\]\. Received: data_format='NHWC'",
          lambda: evonorm_layers.get_norm_activation("evonorm_s0",
                                                     data_format="NHWC"))
  _raises(ValueError, r"give `axis` or `data_format`, not both",
          lambda: evonorm_layers.get_norm_activation(
              "evonorm_s0", axis=1, data_format="channels_first"))


@pytest.mark.parametrize("shape", [(8,), ()])
def test_rank_below_two(shape):
  _raises(ValueError, rf"EvoNormS0.*expects inputs of rank 2 or more.*rank "
          rf"{len(shape)}.*reshape to \[batch, channels\]",
          lambda: evonorm_layers.EvoNormS0()(tf.ones(shape)))


@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"momentum": 1.5}, ValueError, r"`momentum` must be in \[0, 1\]"),
    ({"momentum": "high"}, TypeError, r"`momentum` must be a float"),
    ({"epsilon": 0.0}, ValueError, r"`epsilon` must be > 0"),
])
def test_bad_hyperparameters(kwargs, error, pattern):
  _raises(error, r"EvoNormB0.*" + pattern,
          lambda: evonorm_layers.EvoNormB0(**kwargs))


def test_channel_count_changed_after_build():
  layer = evonorm_layers.EvoNormS0(name="s0_layer")
  layer(tf.ones((2, 4, 4, 8)))
  with pytest.raises(ValueError, match=re.escape("s0_layer")):
    layer(tf.ones((2, 4, 4, 16)))


def test_integer_input():
  _raises(TypeError, r"EvoNormB0.*floating-point inputs.*int32",
          lambda: evonorm_layers.EvoNormB0()(tf.ones((2, 3, 3, 4), tf.int32)))


class _Holder(evonorm_layers.UsesNormActivation, tf_keras.layers.Layer):

  def __init__(self, norm_activation=None, **kwargs):
    super().__init__(**kwargs)
    self.use_norm_activation(norm_activation)


def test_one_norm_factory_object_serialized_by_keras_and_by_its_holders():
  """The factory made once from a config is handed down as the object
  itself; Keras serializes it, and a holder stores its fields, which every
  holder's constructor takes back."""
  factory = evonorm_layers.NormActivationFactory("evonorm_s0", groups=4,
                                                 zero_init_residual=True)
  restored = tf_keras.saving.deserialize_keras_object(
      tf_keras.saving.serialize_keras_object(factory))
  assert restored == factory
  assert _Holder(factory)._make_norm is factory  # pylint: disable=protected-access
  config = _Holder(factory).get_config()
  assert config["norm_activation"] == factory.as_dict()
  assert _Holder.from_config(config)._make_norm == factory  # pylint: disable=protected-access
  by_name = _Holder("EvoNorm-B0")._make_norm  # pylint: disable=protected-access
  assert by_name.type == "evonorm_b0" and by_name.axis == -1
  with pytest.raises(ValueError, match="Unknown normalization-activation"):
    _Holder({"type": "evonorm_b9"})
