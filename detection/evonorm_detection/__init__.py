"""Mask R-CNN (ResNet-FPN and SpineNet) with EvoNorms at every norm site.

Model Garden's Mask R-CNN whose backbone, FPN, RPN head, detection head and
mask head take their normalization-activation layers from the
``evonorm_layers`` registry (Table 5 of "Evolving Normalization-Activation
Layers"). Importing :mod:`evonorm_detection.registry_imports` registers the
backbones, decoder, experiments and task with Model Garden.
"""

# Its programs start quietly (evonorm_layers.startup), before TensorFlow.
import evonorm_layers  # pylint: disable=unused-import,g-import-not-at-top
