"""`twelve-in-one parity`: compare our forward with reference outputs of the official code.

    twelve-in-one parity --fixture=../shared/fixtures/vilbert_tiny
    twelve-in-one parity --fixture=../shared/fixtures/vilbert_tiny --float64 --tolerance=1e-9
    twelve-in-one parity --fixture=../shared/fixtures/vilbert_tiny --scan_layers
    twelve-in-one parity --fixture=../shared/fixtures/vilbert_pretrain_tiny

Loads the fixture's config and state dict through the converter, runs every run listed in its
`manifest.json` in eval mode, and prints the max abs / relative difference of every output and
intermediate it can map (see `twelve_in_one/interop/parity.py` for the metric and the decisions
on `vil_binary_prediction` at odd batch sizes and the unused `linguisic_logit`). Exits 1 when any
array exceeds the tolerance, 2 when the fixture cannot be read. A pretraining fixture (with a
`pretrain_inputs.npz`) runs the pretraining model instead and compares its prediction scores
and its three losses.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

_FIXTURE = flags.DEFINE_string("fixture", None, "fixture directory, local or gs:// (config, "
                               "state dict, inputs.npz, outputs.npz, manifest.json; or the "
                               "pretrain_*.npz of a pretraining fixture)")
_TOLERANCE = flags.DEFINE_float("tolerance", 1e-5, "largest allowed max|ours - ref| / "
                                "max(1, max|ref|) per array")
_FLOAT64 = flags.DEFINE_bool("float64", False, "run in float64 (jax_enable_x64) against "
                             "outputs_fp64.npz")
_SCAN_LAYERS = flags.DEFINE_bool("scan_layers", False, "run the encoder's layers as scans over "
                                 "stacked parameters (config.model.scan_layers)")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _FIXTURE.value:
    raise app.UsageError("--fixture is required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)     # jax's INFO lines would interleave the table
  import jax  # pylint: disable=import-outside-toplevel
  if _FLOAT64.value:
    # Before any array exists: x64 changes the default dtypes of everything that follows.
    jax.config.update("jax_enable_x64", True)
  from twelve_in_one import paths  # pylint: disable=import-outside-toplevel
  from twelve_in_one.interop.parity import run_parity  # pylint: disable=import-outside-toplevel
  try:
    paths.check_bucket(_FIXTURE.value, "--fixture")
    report = run_parity(_FIXTURE.value, tolerance=_TOLERANCE.value, float64=_FLOAT64.value,
                        scan_layers=_SCAN_LAYERS.value)
  except (ValueError, OSError) as e:
    print(f"twelve-in-one parity: error: {e}", file=sys.stderr)
    return 2
  print(report.conversion.format())
  print()
  print(report.format_table())
  return 0 if report.passed else 1
