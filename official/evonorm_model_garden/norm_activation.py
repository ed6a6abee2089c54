"""The norm-activation section of an experiment config, and its checks.

Model Garden's ``NormActivation`` config has only ``activation, use_sync_bn,
norm_momentum, norm_epsilon``. This project's ``NormActivationConfig`` adds
the layer ``type`` (any name registered in ``evonorm_layers``) and
``groups``:

=========================  ===================================================
``type``                   the layer at every norm site, e.g. ``evonorm_b0``
``groups``                 groups of grouped layers (GN, EvoNorm-S)
``norm_epsilon``           the layers' ``epsilon``
``norm_momentum``          the layers' ``momentum`` (batch-dependent layers)
``use_sync_bn``            the layers' ``synchronized`` (cross-replica stats)
``allow_group_fallback``   widths not divisible by ``groups`` use the largest
                           divisor below it at that site, as in the authors'
                           code, reported in one log line (default); false
                           makes such a config an error before training
``zero_init_residual``     the last norm of every residual branch starts
                           with gamma = 0, so each block starts as the
                           identity (``init_zero`` in the authors' ResNets)
``activation``             Model Garden's: only for activations that do not
                           follow a norm (e.g. after the residual add of a
                           ResNet v1 block); activations that follow a norm
                           are part of the norm-activation layer
=========================  ===================================================

:func:`factory_from_config` turns the section into the one
``evonorm_layers.NormActivationFactory`` that a network's norm sites share
(made once per network and handed down as an object);
:func:`register_backbone` registers a backbone class with Model Garden's
backbone factory so that it gets that factory;
:mod:`evonorm_model_garden.norm_sites`
puts registry layers at the norm sites of Model Garden's own blocks and heads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from absl import logging
import tf_keras
from official.vision.configs import common
from official.vision.modeling.backbones import factory as backbone_factory

import evonorm_layers


@dataclasses.dataclass
class NormActivationConfig(common.NormActivation):
  type: str = "bn_relu"
  groups: int = 32
  allow_group_fallback: bool = True
  zero_init_residual: bool = False


class TakesNormActivation(evonorm_layers.UsesNormActivation):
  """For a subclass of a Model Garden network whose norms come from its
  methods (ResNet, SpineNet): takes ``norm_activation`` (an
  ``evonorm_layers.NormActivationFactory``, its fields as a dict, or a
  layer name) besides Model Garden's own arguments, whose ``use_sync_bn``,
  ``norm_momentum`` and ``norm_epsilon`` it makes irrelevant."""

  def __init__(self, norm_activation=None, **kwargs):
    self.use_norm_activation(norm_activation)
    super().__init__(**kwargs)


def factory_from_config(config, axis: int | None = None
                        ) -> evonorm_layers.NormActivationFactory:
  """The layer factory for a norm-activation config (validates ``type``)."""
  return evonorm_layers.NormActivationFactory(
      getattr(config, "type", "bn_relu"),
      groups=getattr(config, "groups", 32),
      epsilon=config.norm_epsilon,
      momentum=config.norm_momentum,
      synchronized=config.use_sync_bn,
      axis=evonorm_layers.registry.data_format_axis() if axis is None
      else axis,
      zero_init_residual=getattr(config, "zero_init_residual", False))


def check_groups_fit(model: tf_keras.Model, config, model_name: str):
  """Reports norm sites whose width ``groups`` does not divide.

  Called on a built model, so the message can list the widths. With
  ``allow_group_fallback`` (the default) it logs one line: those sites use
  the largest divisor below ``groups``. Without, it raises before training.
  """
  grouped = [
      layer for layer in model._flatten_layers(include_self=False,  # pylint: disable=protected-access
                                               recursive=True)
      if isinstance(layer, evonorm_layers.NormActivation)
      and layer.uses_groups and layer.layout is not None]
  misfits = sorted({layer.layout.channels for layer in grouped
                    if layer.layout.channels % layer.groups})
  if not misfits:
    return
  widths = sorted({layer.layout.channels for layer in grouped})
  common_divisors = [g for g in range(1, min(widths) + 1)
                     if all(w % g == 0 for w in widths)]
  if getattr(config, "allow_group_fallback", True):
    used = sorted({(layer.layout.channels, layer.resolved_groups)
                   for layer in grouped if layer.layout.channels in misfits})
    logging.warning(
        "%s: norm_activation.groups=%d does not divide widths %s; those "
        "sites use the largest divisor below it (%s), as the authors' code "
        "does. Set norm_activation.groups=%d (divides every width) to avoid "
        "this, or allow_group_fallback=false to make it an error.",
        model_name, config.groups, misfits,
        ", ".join(f"{w}: {g} groups" for w, g in used), max(common_divisors))
    return
  raise ValueError(
      f"norm_activation.groups={config.groups} does not divide the "
      f"channel count of every norm site of {model_name}: widths "
      f"{misfits} are not divisible. Use a group count that divides all "
      f"widths {widths} (largest: {max(common_divisors)}), or set "
      "norm_activation.allow_group_fallback=true to use the largest "
      "divisor below `groups` at each site, as the authors' code does.")


def register_backbone(
    type_name: str, model_cls: Callable[..., tf_keras.Model],
    arguments: Callable[[Any, Any], Mapping[str, Any]]):
  """Registers ``model_cls`` with Model Garden's backbone factory.

  The builder makes ``model_cls(input_specs=..., norm_activation=<the
  factory of the norm_activation config>, kernel_regularizer=...,
  **arguments(backbone_config, norm_activation_config))`` and checks its
  grouped norm sites (:func:`check_groups_fit`).

  Args:
    type_name: the ``task.model.backbone.type`` to register.
    model_cls: the backbone class.
    arguments: the class's other arguments from the backbone's own config
      (``backbone_config.get()``) and the norm-activation config.

  Returns:
    The registered builder.
  """

  def build(input_specs, backbone_config, norm_activation_config,
            l2_regularizer=None) -> tf_keras.Model:
    cfg = backbone_config.get()
    model = model_cls(
        input_specs=input_specs,
        norm_activation=factory_from_config(norm_activation_config),
        kernel_regularizer=l2_regularizer,
        **arguments(cfg, norm_activation_config))
    check_groups_fit(model, norm_activation_config,
                     f"{type_name}-{getattr(cfg, 'model_id', '')}")
    return model

  build.__name__ = f"build_{type_name}"
  return backbone_factory.register_backbone_builder(type_name)(build)
