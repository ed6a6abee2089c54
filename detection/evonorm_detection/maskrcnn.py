"""Model Garden's Mask R-CNN with registry norms in every component.

:func:`build_maskrcnn` builds Model Garden's model from the same config
(``official/vision/modeling/factory.build_maskrcnn``): the backbone and the
decoder come from Model Garden's factories, where this project registers
``evonorm_resnet``, ``evonorm_spinenet`` and ``evonorm_fpn``; the RPN,
detection and mask heads are then Model Garden's heads with their norm sites
listed (:mod:`evonorm_detection.heads`), built from the same arguments, with
``norm_activation`` (and its ``synchronized``) reaching every one of them,
the mask head included.
"""

from __future__ import annotations

import tf_keras
from official.vision.modeling import factory as mg_factory
from official.vision.modeling import maskrcnn_model

from evonorm_detection import heads
from evonorm_model_garden import norm_activation as norm_lib


def _registry_head(head, cls, norm_activation):
  return cls(**head.get_config(), norm_activation=norm_activation)


def build_maskrcnn(input_specs: tf_keras.layers.InputSpec, model_config,
                   l2_regularizer=None) -> maskrcnn_model.MaskRCNNModel:
  """Mask R-CNN whose every norm site is ``model_config.norm_activation``.

  Args:
    input_specs: the images' ``InputSpec``.
    model_config: a ``MaskRCNN`` model config (Model Garden's fields, this
      project's ``norm_activation``, backbone and decoder types).
    l2_regularizer: kernel regularizer of every convolution and dense layer
      (never of a norm).
  """
  model = mg_factory.build_maskrcnn(input_specs, model_config,
                                    l2_regularizer=l2_regularizer)
  norm = norm_lib.factory_from_config(model_config.norm_activation)
  config = dict(model.get_config())
  config["rpn_head"] = _registry_head(model.rpn_head, heads.RPNHead, norm)
  detection = config["detection_head"]
  config["detection_head"] = (
      [_registry_head(h, heads.DetectionHead, norm) for h in detection]
      if isinstance(detection, (list, tuple)) else
      _registry_head(detection, heads.DetectionHead, norm))
  if config.get("mask_head") is not None:
    config["mask_head"] = _registry_head(config["mask_head"], heads.MaskHead,
                                         norm)
  model = maskrcnn_model.MaskRCNNModel(**config)
  # Model Garden builds the heads lazily, at the first call, and their norm
  # sites replace Model Garden's norms inside build(). A checkpoint restored
  # into an unbuilt model (as Model Garden's export does) binds each head's
  # saved norms to the first layers put there, the replaced ones, and leaves
  # the registry norms untrained. Building the heads now (their layers do not
  # depend on the input shape) puts the registry norms in place first; their
  # variables are still created, and restored, at the first call.
  for head in (model.rpn_head, *model.detection_head, model.mask_head):
    if head is not None and not head.built:
      head.build(None)
  return model
