"""Which variables of a model belong to normalization layers.

The authors excluded every EvoNorm variable (``gamma``, ``beta``, ``v1``) from
L2 weight decay and from LARS. Trainers use :func:`decayed_variables` to
regularize only the rest, or :func:`normalization_variables` to exclude these.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from evonorm_layers.base import NormActivation

# Keras' own normalization layers count too, so a model mixing them with
# EvoNorms is handled in one call.
_KERAS_NORMALIZATION_TYPES = (
    tf_keras.layers.BatchNormalization,
    tf_keras.layers.LayerNormalization,
    tf_keras.layers.GroupNormalization,
    tf_keras.layers.UnitNormalization,
)


def is_normalization_layer(layer: tf.Module) -> bool:
  return isinstance(layer, (NormActivation, *_KERAS_NORMALIZATION_TYPES))


def _layers(model: tf.Module):
  if isinstance(model, tf_keras.layers.Layer):
    return model._flatten_layers(include_self=True, recursive=True)  # pylint: disable=protected-access
  return model._flatten_modules(include_self=True, recursive=True)  # pylint: disable=protected-access


def normalization_variables(model: tf.Module) -> list[tf.Variable]:
  """Every variable (trainable or not) owned by a normalization layer."""
  seen, result = set(), []
  for layer in _layers(model):
    if is_normalization_layer(layer):
      for variable in layer.weights:
        if id(variable) not in seen:
          seen.add(id(variable))
          result.append(variable)
  return result


def decayed_variables(model: tf.Module) -> list[tf.Variable]:
  """The trainable variables that weight decay should apply to.

  Every trainable variable of ``model`` except those of normalization layers,
  in the order of ``model.trainable_variables``.
  """
  excluded = {id(v) for v in normalization_variables(model)}
  return [v for v in model.trainable_variables if id(v) not in excluded]


def l2_weight_decay(model: tf.Module, weight_decay: float) -> tf.Tensor:
  """``weight_decay * sum(||w||^2) / 2`` over :func:`decayed_variables`."""
  variables = decayed_variables(model)
  if not variables:
    return tf.constant(0.0)
  return weight_decay * tf.add_n(
      [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
