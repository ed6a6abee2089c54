"""EvoNorm normalization-activation layers for tf_keras.

Layers from "Evolving Normalization-Activation Layers" (Liu, Brock, Simonyan,
Le; NeurIPS 2020) and the paper's baselines, selected by name through one
registry::

    import evonorm_layers
    layer = evonorm_layers.get_norm_activation("evonorm_b0")
    evonorm_layers.available_norm_activations()
"""

# Before TensorFlow is imported (quiet start-up when run as a program).
from evonorm_layers import startup as _startup
_startup.quiet_when_run_as_program()

# pylint: disable=g-import-not-at-top,wrong-import-position
from evonorm_layers.base import BatchDependentNormActivation
from evonorm_layers.base import GroupedNormActivation
from evonorm_layers.base import NormActivation
from evonorm_layers.baselines import BatchNormReLU
from evonorm_layers.baselines import BatchNormSiLU
from evonorm_layers.baselines import FilterResponseNormTLU
from evonorm_layers.baselines import GroupNormReLU
from evonorm_layers.baselines import GroupNormSiLU
from evonorm_layers.baselines import LayerNormReLU
from evonorm_layers.baselines import PixelNormReLU
from evonorm_layers.baselines import RandomSearchRejectionLayer
from evonorm_layers.evonorm import EvoNormB0
from evonorm_layers.evonorm import EvoNormB1
from evonorm_layers.evonorm import EvoNormB2
from evonorm_layers.evonorm import EvoNormS0
from evonorm_layers.evonorm import EvoNormS1
from evonorm_layers.evonorm import EvoNormS2
from evonorm_layers.layout import channel_axis_for
from evonorm_layers.registry import NormActivationFactory
from evonorm_layers.registry import UsesNormActivation
from evonorm_layers.registry import accepted_arguments
from evonorm_layers.registry import available_norm_activations
from evonorm_layers.registry import get_norm_activation
from evonorm_layers.registry import get_norm_activation_constructor
from evonorm_layers.registry import register_norm_activation
from evonorm_layers.registry import unregister_norm_activation
from evonorm_layers.weight_decay import decayed_variables
from evonorm_layers.weight_decay import is_normalization_layer
from evonorm_layers.weight_decay import l2_weight_decay
from evonorm_layers.weight_decay import normalization_variables

__version__ = "0.1.0"
