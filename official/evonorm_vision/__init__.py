"""The Model Garden side of EvoNorm (the folder official/ of this project).

Named ``evonorm_vision`` so that it never shadows the ``official`` package of
tf-models-official.
"""

# Its programs start quietly (evonorm_layers.startup), before TensorFlow.
import evonorm_layers  # pylint: disable=unused-import,g-import-not-at-top
