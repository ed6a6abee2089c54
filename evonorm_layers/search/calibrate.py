r"""Does a proxy tell good layers from bad? ``python -m evonorm_layers.search.calibrate``.

Runs the rejection protocols and the proxy training, exactly as the search
does, on the paper's known good layers (BN-ReLU, BN-SiLU, GN-ReLU and the
six EvoNorms) and known bad ones (Table 7's two EvoNorm-B0 variants that
train to NaN, layers that do not normalize, and layers whose output does not
depend on their input), and prints whether the proxy accepts exactly the
good ones::

  python -m evonorm_layers.search.calibrate --preset=laptop
  python -m evonorm_layers.search.calibrate --preset=laptop --quality_steps=60
  python -m evonorm_layers.search.calibrate --preset=cluster \
      --anchors=resnet,my_pkg.models:build_unet --dataset=/data/my_images

Exit status 0 when calibrated, 1 when a good layer is rejected or a bad one
accepted (the table says which and why). ``--json_output`` keeps the rows.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from evonorm_model_garden import cli
from evonorm_layers.search import proxy_flags
from evonorm_layers.search import store
from evonorm_layers.search.graph import graph
from evonorm_layers.search.known_layers import B0_VARIANTS
from evonorm_layers.search.known_layers import KNOWN_GRAPHS
from evonorm_layers.search.report import rejection_text

GOOD = ("bn_relu", "bn_silu", "gn_relu", "evonorm_b0", "evonorm_b1",
        "evonorm_b2", "evonorm_s0", "evonorm_s1", "evonorm_s2")
BAD_GRAPHS = {
    # Table 7: NaN during ImageNet training (1e-3 accuracy).
    "b0_no_global_term": B0_VARIANTS["no_global_term"],
    "b0_max_to_add": B0_VARIANTS["max_to_add"],
    # No normalization (rejected at the probe; unbounded ones would also
    # fail the stability test, tanh would not).
    "relu": graph(("max", 0, 1)),
    "silu": graph(("sigmoid", 0), ("mul", 0, 4)),
    "square": graph(("square", 0)),
    "tanh": graph(("tanh", 0)),
    # The output does not depend on the input.
    "x_times_zero": graph(("mul", 0, 1)),
    "sigmoid_v1": graph(("sigmoid", 3)),
}
LAYERS = {**{name: KNOWN_GRAPHS[name] for name in GOOD}, **BAD_GRAPHS}


def calibrate(config, names=None, progress: bool = True) -> list[dict]:
  """Evaluates ``names`` (default: every calibration layer) under
  ``config`` in this process; returns one row per layer."""
  from evonorm_layers.search import evaluation  # pylint: disable=g-import-not-at-top
  from evonorm_layers.search import proxy_data  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  names = list(names or LAYERS)
  data, sessions, rows = proxy_data.load_data(config), {}, []
  for name in tqdm(names, desc="calibration", unit="layer",
                   disable=not progress):
    record = evaluation.evaluate(LAYERS[name], config, data,
                                 sessions=sessions)
    expected = "accept" if name in GOOD else "reject"
    verdict = "accept" if record["status"] == "accepted" else "reject"
    rows.append({"layer": name, "expected": expected, "verdict": verdict,
                 "ok": expected == verdict, **record})
  return rows


def verdict(rows) -> str:
  """The calibration's conclusion: CALIBRATED only when both good and bad
  layers were run and every one got its expected verdict."""
  if not all(r["ok"] for r in rows):
    wrong = [r["layer"] for r in rows if not r["ok"]]
    return (f"NOT CALIBRATED ({', '.join(wrong)} got the wrong verdict)")
  kinds = {r["expected"] for r in rows}
  if kinds == {"accept", "reject"}:
    return "CALIBRATED (accepts the good layers and rejects the bad ones)"
  untested = "bad layers (rejects)" if kinds == {"accept"} else (
      "good layers (accepts)")
  return (f"PARTLY CHECKED: every layer run got its expected verdict, but no "
          f"{untested} were run; run without --layers (or add "
          f"{'a bad layer' if kinds == {'accept'} else 'a good layer'}) to "
          "calibrate")


def describe(row) -> str:
  return "accepted" if row["status"] == "accepted" else rejection_text(row)


def table(rows, anchors) -> str:
  """The calibration table in markdown."""
  lines = ["| layer | expected | verdict | why | " + " | ".join(
      f"{a} quality / final" for a in anchors) + " | max grad norm | "
           "seconds |", "|---|---|---|---|" + "---:|" * (len(anchors) + 2)]
  for r in rows:
    cells = []
    for a in anchors:
      quality = r.get("quality", {}).get(a)
      final = r.get("fitness", {}).get(a)
      cells.append("-" if quality is None else f"{quality:.3f}" + (
          f" / {final:.3f}" if final is not None else ""))
    norms = [s["max_grad_norm"] for s in r.get("stability", {}).values()]
    verdict = r["verdict"] + ("" if r["ok"] else " **MISMATCH**")
    lines.append(f"| {r['layer']} | {r['expected']} | {verdict} | "
                 f"{describe(r)} | " + " | ".join(cells) +
                 (f" | {max(norms):.3g}" if norms else " | -") +
                 f" | {r['seconds']['total']:.1f} |")
  return "\n".join(lines)


FLAGS = flags.FLAGS
proxy_flags.define()
flags.DEFINE_list("layers", None, "Calibration layers to run (default all): "
                  + ", ".join(LAYERS))
flags.DEFINE_integer("seed", 0, "Seed of the proxies.")
flags.DEFINE_string("json_output", None, "Also write the rows here.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
  with cli.user_errors():
    if len(argv) > 1:
      raise ValueError(f"unexpected arguments {argv[1:]}: every setting is a "
                       "flag (see --helpshort).")
    unknown = sorted(set(FLAGS.layers or ()) - set(LAYERS))
    if unknown:
      raise ValueError(f"Unknown calibration layers {unknown}; choose among "
                       f"{', '.join(LAYERS)}.")
    cli.check_output_file("--json_output", FLAGS.json_output)
    config = proxy_flags.proxy_config(FLAGS.seed)
  rows = calibrate(config, FLAGS.layers, progress=FLAGS.progress)
  good = all(r["ok"] for r in rows)
  print(f"\nPreset {FLAGS.preset} with {proxy_flags.given() or 'no changes'}"
        f": {verdict(rows)}\n")
  print(table(rows, config.anchors))
  if FLAGS.json_output:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json_output)),
                exist_ok=True)
    store.write_json_atomic(FLAGS.json_output,
                            {"config": config.to_dict(), "rows": rows})
  sys.stdout.flush()
  return 0 if good else 1


if __name__ == "__main__":
  cli.run(main)
