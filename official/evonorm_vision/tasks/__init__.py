"""Model Garden tasks for experiments with a selectable norm-activation."""

from evonorm_vision.tasks import image_classification
