"""Model Garden's FPN with registry norms on its outputs.

Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017
(https://arxiv.org/abs/1612.03144). Model Garden's FPN ends every output
level with a ``BatchNormalization`` (``norm_{level}``) and no activation. Here
the same graph (lateral and top-down connections, post-hoc and coarser
convolutions: Model Garden's own code builds it) ends each level with the
registry layer's ``nonlinearity=False`` form instead.
"""

from __future__ import annotations

from typing import Any, Mapping

import tf_keras
from official.vision.modeling.decoders import factory
from official.vision.modeling.decoders import fpn as mg_fpn

import evonorm_layers
from evonorm_model_garden import norm_activation as norm_lib


@tf_keras.utils.register_keras_serializable(package="EvoNorm")
class FPN(evonorm_layers.UsesNormActivation, mg_fpn.FPN):
  """FPN whose output norms come from the ``evonorm_layers`` registry.

  Args:
    input_specs: ``{level: TensorShape}`` of the backbone's endpoints.
    norm_activation: an ``evonorm_layers.NormActivationFactory``, its fields
      as a dict, or a layer name.
    **kwargs: Model Garden ``FPN`` arguments (``min_level``, ``max_level``,
      ``num_filters``, ``fusion_type``, ...); its ``use_sync_bn``,
      ``norm_momentum`` and ``norm_epsilon`` are ignored in favour of
      ``norm_activation``.
  """

  def __init__(self, input_specs: Mapping[str, Any], norm_activation=None,
               name: str | None = None, **kwargs):
    make_norm = self.use_norm_activation(norm_activation)
    # Model Garden's graph; its last op on every level is norm_{level}.
    reference = mg_fpn.FPN(input_specs=input_specs, **kwargs)
    config = dict(reference.get_config())
    levels = range(config["min_level"], config["max_level"] + 1)
    outputs = {
        str(level): make_norm(nonlinearity=False, name=f"norm_{level}")(
            reference.get_layer(f"norm_{level}").input)
        for level in levels}
    # Model Garden's FPN.__init__ is skipped: its graph is built above. (Its
    # construction made the class a functional model, so this is
    # Functional.__init__.)
    super(mg_fpn.FPN, self).__init__(  # pylint: disable=bad-super-call
        inputs=reference.input, outputs=outputs, name=name)
    self._config_dict = config
    self._output_specs = {k: v.get_shape() for k, v in outputs.items()}


@factory.register_decoder_builder("evonorm_fpn")
def build_fpn(input_specs, model_config, l2_regularizer=None) -> FPN:
  """Builds the registry-norm FPN from ``model_config.decoder.evonorm_fpn``."""
  cfg = model_config.decoder.get()
  model = FPN(
      input_specs=input_specs,
      norm_activation=norm_lib.factory_from_config(
          model_config.norm_activation),
      min_level=model_config.min_level,
      max_level=model_config.max_level,
      num_filters=cfg.num_filters,
      fusion_type=cfg.fusion_type,
      use_separable_conv=cfg.use_separable_conv,
      use_keras_layer=cfg.use_keras_layer,
      activation=model_config.norm_activation.activation,
      kernel_regularizer=l2_regularizer)
  norm_lib.check_groups_fit(model, model_config.norm_activation, "evonorm_fpn")
  return model
