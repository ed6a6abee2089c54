"""Imports everything this package registers with Model Garden: the
``evonorm_spinenet`` backbone, the ``evonorm_fpn`` decoder, the Mask R-CNN
experiments and task."""

# pylint: disable=unused-import
from evonorm_detection import backbones
from evonorm_detection import configs
from evonorm_detection import decoders
from evonorm_detection import task
