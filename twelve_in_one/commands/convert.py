"""`twelve-in-one convert`: official PyTorch / npz / safetensors state dict <-> our checkpoint.

    # official -> ours (an orbax checkpoint directory with the config beside it)
    twelve-in-one convert --input=multi_task_model.bin \\
        --config=bert_base_6layer_6conect.json --output=ckpt/multi_task
    # ours -> official (pytorch_model.bin or state_dict.npz, plus config.json)
    twelve-in-one convert --direction=export --input=ckpt/multi_task --output=export \\
        --format=torch

Import prints the conversion report: parameters loaded, heads missing from the file (initialised
as the official code does), unused official parameters dropped, the tied decoder checked.

Every location (input, config, output) may be a local path or a `gs://` one:

    twelve-in-one convert --input=gs://B/multi_task_model.bin --config=gs://B/config.json \\
        --output=gs://B/ckpt/multi_task
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from twelve_in_one.interop.convert import convert_export, convert_import

_INPUT = flags.DEFINE_string("input", None, "import: official state dict (.bin/.pt, .npz, "
                             ".safetensors); export: our checkpoint directory")
_CONFIG = flags.DEFINE_string("config", None, "official JSON config (required for import; for "
                              "export, checked against the checkpoint's own config)")
_OUTPUT = flags.DEFINE_string("output", None, "output directory (local or gs://)")
_DIRECTION = flags.DEFINE_enum("direction", "import", ["import", "export"],
                               "import: official -> ours; export: ours -> official")
_FORMAT = flags.DEFINE_enum("format", "npz", ["npz", "torch"],
                            "export format: npz (state_dict.npz) or torch (pytorch_model.bin)")
_IGNORE_UNEXPECTED = flags.DEFINE_bool("ignore_unexpected", False,
                                       "import: drop unknown keys instead of failing")
_SEED = flags.DEFINE_integer("seed", 0, "import: seed for parameters missing from the file")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing output")
_ARCHITECTURE = flags.DEFINE_enum(
    "architecture", "tasks", ["tasks", "pretraining"],
    "import: the model the state dict is of: tasks (the 12-in-1 model, e.g. "
    "multi_task_model.bin) or pretraining (bert.* and cls.* only, e.g. pretrained_model.bin); "
    "export takes it from the checkpoint")

def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # orbax logs every step of a save at INFO; the report is what the user asked for.
    logging.set_verbosity(logging.WARNING)
  if not _INPUT.value or not _OUTPUT.value:
    raise app.UsageError("--input and --output are required")
  try:
    if _DIRECTION.value == "import":
      if not _CONFIG.value:
        raise app.UsageError("--config (the official JSON config) is required for import")
      text = convert_import(_INPUT.value, _CONFIG.value, _OUTPUT.value,
                            ignore_unexpected=_IGNORE_UNEXPECTED.value, seed=_SEED.value,
                            overwrite=_OVERWRITE.value, architecture=_ARCHITECTURE.value)
    else:
      text = convert_export(_INPUT.value, _OUTPUT.value, _FORMAT.value,
                            config_path=_CONFIG.value, overwrite=_OVERWRITE.value)
  except (ValueError, OSError) as e:
    # Our errors already name the file, key and shapes; a traceback would only bury that.
    print(f"twelve-in-one convert: error: {e}", file=sys.stderr)
    return 1
  print(text)
  return 0
