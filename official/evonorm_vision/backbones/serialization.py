"""Keras-serializable backbone configs (regularizer objects as dicts)."""

import tf_keras

_REGULARIZER_KEYS = ("kernel_regularizer", "bias_regularizer")


def serialize_regularizers(config: dict) -> dict:
  return {k: (tf_keras.regularizers.serialize(v)
              if k in _REGULARIZER_KEYS and v is not None else v)
          for k, v in config.items()}


def deserialize_regularizers(config: dict) -> dict:
  return {k: (tf_keras.regularizers.get(v) if k in _REGULARIZER_KEYS else v)
          for k, v in config.items()}
