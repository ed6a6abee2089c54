"""The Model Garden side of EvoNorm (the folder official/ of this project).

Named ``evonorm_vision`` so that it never shadows the ``official`` package of
tf-models-official.
"""
