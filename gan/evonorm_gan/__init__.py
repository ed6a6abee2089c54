"""BigGAN-deep with swappable normalization-activation layers (Table 6).

The generator takes any layer of the ``evonorm_layers`` registry at every
norm site, class-conditional through the layers' call-time affine
(``gamma = 1 + linear(v)``, ``beta = linear(v)``). Importing
:mod:`evonorm_gan.configs` registers the experiments.
"""

# Its programs start quietly (evonorm_layers.startup), before TensorFlow.
import evonorm_layers  # pylint: disable=unused-import,g-import-not-at-top
