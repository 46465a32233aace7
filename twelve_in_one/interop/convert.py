"""Conversion between the official state dict and our checkpoint, as library functions.

`twelve-in-one convert` is the command over these; tests and scripts call them directly.
"""

from __future__ import annotations

import json
import os

from twelve_in_one import paths

EXPORT_FILES = {"npz": "state_dict.npz", "torch": "pytorch_model.bin"}


def convert_import(input_path: str, config_path: str, output: str, *,
                   ignore_unexpected: bool = False, seed: int = 0,
                   overwrite: bool = False, architecture: str = "tasks") -> str:
  """Official state dict -> our checkpoint at `output`; returns the report text."""
  from twelve_in_one.interop import checkpoint_io
  from twelve_in_one.interop.official import import_official
  for location, flag in ((input_path, "--input"), (config_path, "--config"),
                         (output, "--output")):
    paths.check_bucket(location, flag)
  config = checkpoint_io.read_official_config(config_path)
  params, report = import_official(checkpoint_io.read_state_dict(input_path), config,
                                   allow_unexpected=ignore_unexpected, rng=seed,
                                   source=input_path, architecture=architecture)
  meta = {"source": paths.describe(input_path), "official_config": paths.describe(config_path),
          "conversion": report.to_json(), checkpoint_io.ARCHITECTURE_KEY: architecture}
  path = checkpoint_io.save_params(output, params, config, meta=meta, overwrite=overwrite)
  return report.format() + f"\nwrote {path}"


def convert_export(input_dir: str, output: str, fmt: str, *, config_path: str | None = None,
                   overwrite: bool = False) -> str:
  """Our checkpoint -> official state dict + official config.json in `output`.

  The state dict is written first and config.json last, each as a whole file.
  """
  from twelve_in_one.interop import checkpoint_io
  from twelve_in_one.interop.official import TIED_ALIASES, export_official
  for location, flag in ((input_dir, "--input"), (config_path, "--config"), (output, "--output")):
    paths.check_bucket(location, flag)
  params, config, meta = checkpoint_io.load_params(input_dir)
  if config_path is not None:
    given = checkpoint_io.read_official_config(config_path).to_official_dict()
    stored = config.to_official_dict()
    differ = sorted(k for k in given if given[k] != stored.get(k))
    if differ:
      raise ValueError(f"{config_path}: differs from the checkpoint's config in "
                       f"{[f'{k}: {given[k]!r} vs {stored.get(k)!r}' for k in differ]}")
  state = export_official(params, config, architecture=checkpoint_io.architecture_of(meta))
  folder = paths.as_path(output)
  target, config_out = folder / EXPORT_FILES[fmt], folder / "config.json"
  for path in (target, config_out):
    if path.exists() and not overwrite:
      raise FileExistsError(f"{path}: already exists (pass --overwrite to replace it)")
  checkpoint_io.write_state_dict(os.fspath(target), state, tied=TIED_ALIASES)
  paths.write_text_atomically(config_out, json.dumps(config.to_official_dict(), indent=2))
  values = sum(v.size for k, v in state.items() if k not in TIED_ALIASES)
  return (f"exported {len(state)} official names ({values:,} values; the tied decoder shares "
          f"the word embeddings) to {target}\nwrote the official config to {config_out}")
