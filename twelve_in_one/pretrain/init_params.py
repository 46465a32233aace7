"""The parameters a pretraining run starts from: random, BERT's, or an earlier pretraining's.

* `config.init.bert`: a Hugging Face BERT (weights file or model folder) fills the text stream
  and the masked-LM head, as `train_concap.py --from_pretrained bert-base-uncased` does; the
  visual stream, co-attention, poolers and the other heads keep their fresh initialisation.
* `config.init.checkpoint`: an earlier pretraining's parameters, to continue from: a folder
  with `meta.json` `"architecture": "pretraining"` (a run's `pretrained/`, or `twelve-in-one
  convert --architecture=pretraining`), or an official state dict with `bert.*` and `cls.*`
  names (`pretrained_model.bin`, `.npz`, `.safetensors`).

Both may be local or on Cloud Storage; BERT is loaded first, then the checkpoint over it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import traverse_util

from twelve_in_one import paths
from twelve_in_one.interop import bert as bert_io
from twelve_in_one.interop import checkpoint_io, official
from twelve_in_one.models import scan
from twelve_in_one.models.config import ViLBertConfig

PRETRAINING = "pretraining"


def _location(location: str, key: str, expected: str):
  paths.check_bucket(location, key)
  path = paths.as_path(location)
  if not path.exists():
    raise paths.LocationError(f"{key} {location}: no such file or folder; expected {expected}")
  return path


def _same_shapes(loaded: Any, expected: Any, source: str) -> None:
  got = {k: np.shape(v) for k, v in traverse_util.flatten_dict(loaded, sep="/").items()}
  want = {k: np.shape(v) for k, v in traverse_util.flatten_dict(expected, sep="/").items()}
  if got.keys() != want.keys():
    raise ValueError(f"config.init.checkpoint {source}: parameters differ from the configured "
                     f"model: missing {sorted(want.keys() - got.keys())[:5]}, unexpected "
                     f"{sorted(got.keys() - want.keys())[:5]}")
  for key, shape in want.items():
    if got[key] != shape:
      raise ValueError(f"config.init.checkpoint {source}: parameter {key} has shape "
                       f"{got[key]}, the configured model expects {shape}")


def load_initial_params(config, model_config: ViLBertConfig, params: Any) -> tuple[Any, str]:
  """(parameters, report) after applying `config.init` to freshly initialised numpy ones."""
  reports = []
  if config.init.bert:
    _location(config.init.bert, "config.init.bert", "a HF BERT weights file or model folder")
    params, report = bert_io.load_bert_checkpoint(config.init.bert, model_config, params=params)
    reports.append(report.format())
  source = config.init.checkpoint
  if source:
    location = _location(source, "config.init.checkpoint",
                         "a pretraining params folder or an official pretrained_model.bin")
    if location.is_dir():
      loaded, _, meta = checkpoint_io.load_params(source)
      architecture = checkpoint_io.architecture_of(meta)
      if architecture != PRETRAINING:
        raise ValueError(f"config.init.checkpoint {source}: holds a {architecture!r} model's "
                         f"parameters; pretraining continues from a {PRETRAINING!r} one "
                         "(meta.json `architecture`)")
      loaded = scan.to_layout(loaded, model_config)
      _same_shapes(loaded, params, source)
      params = loaded
      reports.append(f"{source}: loaded the pretraining parameters")
    else:
      params, report = official.import_official(
          checkpoint_io.read_state_dict(source), model_config,
          allow_unexpected=bool(config.init.get("ignore_unexpected", False)), rng=config.seed,
          source=source, architecture=PRETRAINING)
      reports.append(report.format())
  return params, "\n".join(reports)
