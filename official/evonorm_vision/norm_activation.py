"""The norm-activation section of an experiment config, and its checks.

Model Garden's ``NormActivation`` config has only ``activation, use_sync_bn,
norm_momentum, norm_epsilon``. This project's version adds the layer ``type``
(any name registered in ``evonorm_layers``) and ``groups``:

=========================  ===================================================
``type``                   the layer at every norm site, e.g. ``evonorm_b0``
``groups``                 groups of grouped layers (GN, EvoNorm-S)
``norm_epsilon``           the layers' ``epsilon``
``norm_momentum``          the layers' ``momentum`` (batch-dependent layers)
``use_sync_bn``            the layers' ``synchronized`` (cross-replica stats)
``allow_group_fallback``   accept widths not divisible by ``groups`` (then
                           the largest divisor below is used per layer, as
                           in the authors' code); by default such a config is
                           an error before training starts
``activation``             Model Garden's: only for activations that do not
                           follow a norm (e.g. after the residual add of a
                           ResNet v1 block); activations that follow a norm
                           are part of the norm-activation layer
=========================  ===================================================
"""

from __future__ import annotations

import dataclasses

import tf_keras
from official.vision.configs import common

import evonorm_layers


@dataclasses.dataclass
class NormActivation(common.NormActivation):
  type: str = "bn_relu"
  groups: int = 32
  allow_group_fallback: bool = False


def factory_from_config(config, axis: int | None = None
                        ) -> evonorm_layers.NormActivationFactory:
  """The layer factory for a norm-activation config (validates ``type``)."""
  if axis is None:
    axis = -1 if tf_keras.backend.image_data_format() == "channels_last" else 1
  return evonorm_layers.NormActivationFactory(
      getattr(config, "type", "bn_relu"),
      groups=getattr(config, "groups", 32),
      epsilon=config.norm_epsilon,
      momentum=config.norm_momentum,
      synchronized=config.use_sync_bn,
      axis=axis)


def check_groups_fit(model: tf_keras.Model, config, backbone_name: str):
  """Raises if ``groups`` does not divide the width of a grouped norm site.

  Called on a built backbone, so the message can list the offending widths.
  """
  if getattr(config, "allow_group_fallback", False):
    return
  misfits = sorted({
      layer.layout.channels
      for layer in model._flatten_layers(include_self=False, recursive=True)  # pylint: disable=protected-access
      if isinstance(layer, evonorm_layers.GroupedNormActivation)
      and layer.layout is not None and layer.layout.channels % layer.groups
  })
  if misfits:
    widths = sorted({
        layer.layout.channels
        for layer in model._flatten_layers(include_self=False, recursive=True)  # pylint: disable=protected-access
        if isinstance(layer, evonorm_layers.GroupedNormActivation)
        and layer.layout is not None
    })
    common_divisors = [g for g in range(1, min(widths) + 1)
                       if all(w % g == 0 for w in widths)]
    raise ValueError(
        f"norm_activation.groups={config.groups} does not divide the "
        f"channel count of every norm site of {backbone_name}: widths "
        f"{misfits} are not divisible. Use a group count that divides all "
        f"widths {widths} (largest: {max(common_divisors)}), or set "
        "norm_activation.allow_group_fallback=true to use the largest "
        "divisor below `groups` at each site, as the authors' code does.")
