"""Imports everything this project registers with Model Garden.

Model Garden's own ``official/vision/train.py`` imports only its registry, so
entry points that should know this project's backbones, experiments and tasks
import this module first (as every ``official/projects/*/train.py`` does).
"""

# pylint: disable=unused-import
from official.vision import registry_imports

from evonorm_vision import backbones
from evonorm_vision import tasks
from evonorm_vision.configs import image_classification
# Mask R-CNN (package evonorm_detection, under detection/): its experiments
# run from the same entry points.
from evonorm_detection import registry_imports as detection_registry_imports
