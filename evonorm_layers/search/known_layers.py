"""The paper's layers written as search-space graphs.

Every EvoNorm, and the BN-ReLU-like baselines, is a graph of the search
space; compiled, each equals the hand-written layer of the same name
(``tests/test_search_graph.py``). Where a formula has a constant the search
space lacks, the graph uses the per-channel variable that starts at that
value, so the two agree at initialization:

* EvoNorm-B1's ``x + 1`` is ``x + v1`` (``v1`` starts at ones);
* BN-ReLU, BN-SiLU, GN- and LayerNorm-ReLU put the affine inside the
  activation, the graph puts
  it after the graph: they agree while ``gamma = 1, beta = 0``;
* FRN's threshold ``tau`` is ``v0`` (zeros), with the affine after the max.

Node numbering: 0 = x, 1 = zero, 2 = v0, 3 = v1, then the listed nodes.
"""

from __future__ import annotations

from evonorm_layers.search.graph import graph

KNOWN_GRAPHS = {
    "evonorm_b0": graph(("std_bwh", 0), ("mul", 3, 0), ("std_wh", 0),
                        ("add", 5, 6), ("max", 4, 7), ("div", 0, 8)),
    "evonorm_b1": graph(("std_bwh", 0), ("add", 0, 3), ("rms_wh", 0),
                        ("mul", 5, 6), ("max", 4, 7), ("div", 0, 8)),
    "evonorm_b2": graph(("square", 0), ("mean_wh", 4), ("neg", 0),
                        ("add", 5, 6), ("sqrt", 7), ("std_bwh", 0),
                        ("max", 9, 8), ("div", 0, 10)),
    "evonorm_s0": graph(("mul", 3, 0), ("sigmoid", 4), ("mul", 0, 5),
                        ("std_whc/g", 0), ("div", 6, 7)),
    "evonorm_s1": graph(("sigmoid", 0), ("mul", 0, 4), ("std_whc/g", 0),
                        ("div", 5, 6)),
    "evonorm_s2": graph(("sigmoid", 0), ("mul", 0, 4), ("rms_whc/g", 0),
                        ("div", 5, 6)),
    "rs_rej": graph(("max", 0, 1), ("rms_bwh", 0), ("div", 4, 5)),
    "bn_relu": graph(("mean_bwh", 0), ("neg", 4), ("add", 0, 5),
                     ("std_bwh", 0), ("div", 6, 7), ("max", 8, 1)),
    "bn_silu": graph(("mean_bwh", 0), ("neg", 4), ("add", 0, 5),
                     ("std_bwh", 0), ("div", 6, 7), ("sigmoid", 8),
                     ("mul", 8, 9)),
    "gn_relu": graph(("mean_whc/g", 0), ("neg", 4), ("add", 0, 5),
                     ("std_whc/g", 0), ("div", 6, 7), ("max", 8, 1)),
    "ln_relu": graph(("mean_whc", 0), ("neg", 4), ("add", 0, 5),
                     ("std_whc", 0), ("div", 6, 7), ("max", 8, 1)),
    "frn_tlu": graph(("rms_wh", 0), ("div", 0, 4), ("max", 5, 2)),
}

# Table 7's structural changes to EvoNorm-B0, for the stability protocol.
B0_VARIANTS = {
    "no_v1x": graph(("std_bwh", 0), ("std_wh", 0), ("max", 4, 5),
                    ("div", 0, 6)),
    "no_local_term": graph(("std_bwh", 0), ("div", 0, 4)),
    "no_global_term": graph(("mul", 3, 0), ("std_wh", 0), ("add", 4, 5),
                            ("div", 0, 6)),
    "max_to_add": graph(("std_bwh", 0), ("mul", 3, 0), ("std_wh", 0),
                        ("add", 5, 6), ("add", 4, 7), ("div", 0, 8)),
}
