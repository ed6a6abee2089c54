"""Keras serialization shared by the backbones of this package.

Each backbone is a functional ``tf_keras.Model`` built in ``__init__`` from
its constructor arguments, kept in ``self._config_dict`` (regularizer
objects serialized as dicts) besides its norm-activation factory
(``evonorm_layers.UsesNormActivation``), with its endpoints' shapes in
``self._output_specs``, as Model Garden's backbones do.
"""

import tf_keras

import evonorm_layers

_REGULARIZER_KEYS = ("kernel_regularizer", "bias_regularizer")


def serialize_regularizers(config: dict) -> dict:
  return {k: (tf_keras.regularizers.serialize(v)
              if k in _REGULARIZER_KEYS and v is not None else v)
          for k, v in config.items()}


def deserialize_regularizers(config: dict) -> dict:
  return {k: (tf_keras.regularizers.get(v) if k in _REGULARIZER_KEYS else v)
          for k, v in config.items()}


class _ConfigDictModel(tf_keras.Model):

  def get_config(self):
    return serialize_regularizers(self._config_dict)


class SerializableBackbone(evonorm_layers.UsesNormActivation,
                           _ConfigDictModel):
  """``get_config``/``from_config`` and ``output_specs`` of a backbone."""

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**deserialize_regularizers(config))

  @property
  def output_specs(self):
    """``{level: TensorShape}`` of the endpoints decoders read."""
    return self._output_specs
