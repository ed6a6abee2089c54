"""The layer search: evolve normalization-activation layers from primitive ops.

Sections 3 and 4 of the paper: layers are computation graphs over primitive
ops (``primitives``, ``graph``), compiled into tf_keras layers (``layer``);
regularized evolution with a multi-objective tournament (``evolution``)
proposes them, rejection protocols (``protocols``) discard bad ones cheaply,
and proxy tasks on several anchor architectures (``proxies``, trained by
``proxy_training`` on the ``runners`` that ``evaluation.evaluate`` picks)
score the rest, evaluated asynchronously on Ray (``controller``), whose
long-lived workers ``tensorflow_hygiene`` keeps small, with every result logged
(``store``) so a search can be killed and resumed; ``report`` writes the
plots and the ranking. ``program`` interprets any graph in one traced model
(candidates in seconds), ``proxies.PRESETS`` are calibrated proxies
(``python -m evonorm_layers.search.calibrate``).

Run one with ``python -m evonorm_layers.search --output_dir=DIR``.
"""

from evonorm_layers.search.graph import LayerGraph
from evonorm_layers.search.graph import Node
from evonorm_layers.search.known_layers import KNOWN_GRAPHS
from evonorm_layers.search.layer import SearchedLayerConstructor
from evonorm_layers.search.layer import SearchedNormActivation
from evonorm_layers.search.layer import load_searched_layers
from evonorm_layers.search.layer import register_searched_layer
from evonorm_layers.search.program import ProgramNormActivation
