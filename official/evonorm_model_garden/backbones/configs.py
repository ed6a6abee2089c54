"""Backbone configs: Model Garden's, plus this project's backbones."""

import dataclasses

from official.modeling import hyperparams
from official.vision.configs import backbones


@dataclasses.dataclass
class ResNetV2(hyperparams.Config):
  """Pre-activation ResNet. ``stem_type``: ``imagenet`` or ``cifar``."""
  model_id: int = 50
  stem_type: str = "imagenet"
  width_multiplier: float = 1.0


@dataclasses.dataclass
class EvoNormMobileNet(hyperparams.Config):
  """``model_id``: ``MobileNetV2`` or ``MnasNetB1``."""
  model_id: str = "MobileNetV2"
  filter_size_scale: float = 1.0
  stochastic_depth_drop_rate: float = 0.0


@dataclasses.dataclass
class Backbone(backbones.Backbone):
  """Model Garden's backbone choice plus ``resnet_v2`` and the ``evonorm_*``
  versions of Model Garden's ResNet, EfficientNet and MobileNet."""
  resnet_v2: ResNetV2 = dataclasses.field(default_factory=ResNetV2)
  evonorm_resnet: backbones.ResNet = dataclasses.field(
      default_factory=backbones.ResNet)
  evonorm_efficientnet: backbones.EfficientNet = dataclasses.field(
      default_factory=backbones.EfficientNet)
  evonorm_mobilenet: EvoNormMobileNet = dataclasses.field(
      default_factory=EvoNormMobileNet)
