"""Backbones registered with Model Garden's backbone factory.

Each takes one ``norm_activation`` setting that picks the layer of every norm
site through the ``evonorm_layers`` registry:

==========================  =================================================
``resnet_v2``               pre-activation ResNet v2, depths 18-200 (the
                            paper's ResNets), ImageNet or CIFAR stem
``evonorm_resnet``          Model Garden's ResNet (v1)
``evonorm_efficientnet``    EfficientNet B0-B7
``evonorm_mobilenet``       MobileNetV2 and MnasNet-B1
==========================  =================================================
"""

from evonorm_model_garden.backbones import efficientnet
from evonorm_model_garden.backbones import mobilenet
from evonorm_model_garden.backbones import resnet
from evonorm_model_garden.backbones import resnet_v2
