"""Imports everything this package registers with Model Garden: the
backbones (:mod:`evonorm_model_garden.backbones`), the image classification
task and its experiments.

Declared as an ``evonorm.experiments`` entry point (``pyproject.toml``), so
the project's entry points find these experiments, and those of the other
task packages, through
:func:`evonorm_model_garden.experiments.import_registrations`.
"""

# pylint: disable=unused-import
from official.vision import registry_imports

from evonorm_model_garden import backbones
from evonorm_vision import tasks
from evonorm_vision.configs import image_classification
