"""Parity of our forward with reference outputs recorded from the official PyTorch code.

A fixture folder (e.g. `shared/fixtures/vilbert_tiny/`) holds:

* an official JSON config (`*config*.json`) and a state dict (`*state_dict*.npz`, else
  `.safetensors`, else torch `.bin`/`.pt`) under the official names;
* `inputs.npz`: `input_ids`, `token_type_ids`, `attention_mask`, `image_feat`, `image_loc`,
  `image_mask` for all samples, and `task_ids.<run>` per run;
* `manifest.json` with `"runs": {run: {"samples": [...], "task_ids": [...]}}`;
* `outputs.npz` (float32) and `outputs_fp64.npz` (float64): `<run>.<output>` and
  `<run>.bert.<intermediate>`.

`run_parity` loads the state dict through the converter, runs every run of the manifest in
eval mode and compares every reference array it can map to one of our outputs. Nothing here
knows the shared fixture's sizes or run names.

A pretraining fixture (e.g. `shared/fixtures/vilbert_pretrain_tiny/`, recognised by its
`pretrain_inputs.npz`) holds the official `BertForMultiModalPreTraining` on one masked batch:
the config and state dict as above (`bert.*`, `cls.*`), `pretrain_inputs.npz` (the batch keys
of `pretrain/losses.py`), and `pretrain_outputs.npz` / `pretrain_outputs_fp64.npz` with
`prediction_scores_t`, `prediction_scores_v`, `seq_relationship_score` and, per visual target
k, `vt<k>.masked_lm_loss`, `vt<k>.masked_img_loss`, `vt<k>.next_sentence_loss` and gradients
`vt<k>.grad.<name>`. `run_parity` runs our `ViLBertForPretraining` on it and compares the three
score arrays and the three losses (the official forward's, i.e. objective 0 on the stored
labels). Gradients are not compared here (one summary line says so); only visual target 0,
the 12-in-1 setting, is implemented.

Decisions, printed with the results:
* Error metric per array: max|ours - ref| / max(1, max|ref|), i.e. absolute for arrays of
  size <= 1 and relative to the array's scale beyond; the absolute difference is reported too.
* `vision_logit` is compared on real regions and on padded regions separately: the padded
  entries carry the -10000 mask and would otherwise set the array's scale.
* `vil_binary_prediction` on an odd batch: the official forward silently returns the
  pretraining alignment head `cls.bi_seq_relationship(pooled)`. Our model refuses an odd batch
  for that head (a different function under the same name is a trap in training code), so the
  reference is compared with our `bi_seq_relationship` output, and the row says so.
* `linguisic_logit` is an official head that no task uses; our model leaves it out (like the
  unused `q_dense1/2`), so it is listed as not mapped, not as a failure.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import numpy as np

from twelve_in_one import paths
from twelve_in_one.interop.checkpoint_io import read_official_config, read_state_dict
from twelve_in_one.interop.official import ConversionReport, import_official
from twelve_in_one.models import ALL_OUTPUTS, BACKBONE_OUTPUTS, ViLBertConfig, ViLBertForVLTasks
from twelve_in_one.models.pretraining import PRETRAINING_SCORES, ViLBertForPretraining
from twelve_in_one.pretrain import losses as pretrain_losses

# Fixture input name -> our keyword argument. `co_attention_mask` is not passed: it has no
# effect in the official forward.
INPUTS = {"input_ids": "input_ids", "token_type_ids": "segment_ids",
          "attention_mask": "input_mask", "image_feat": "image_feat",
          "image_loc": "image_loc", "image_mask": "image_mask"}
UNUSED_HEADS = {"linguisic_logit": "not mapped: unused head left out (no task reads it; like "
                                   "q_dense1/q_dense2 it is not part of our model)"}
PRETRAINING_INPUTS = "pretrain_inputs.npz"
PRETRAINING_LOSSES = ("masked_lm_loss", "masked_img_loss", "next_sentence_loss")
ODD_BATCH_NOTE = ("odd batch: the official forward returns cls.bi_seq_relationship(pooled) "
                  "under this name; compared with our bi_seq_relationship (our "
                  "vil_binary_prediction refuses odd batches)")


@dataclasses.dataclass
class ArrayDiff:
  """One compared array: `key` is the reference key, `ours` our output it was compared with."""
  key: str
  ours: str
  shape: tuple[int, ...]
  max_abs: float          # max |ours - ref|
  ref_max: float          # max |ref|
  error: float            # max_abs / max(1, ref_max)
  passed: bool
  note: str = ""


@dataclasses.dataclass
class ParityReport:
  """Every comparison of one fixture, plus what could not be mapped and why."""
  fixture: str
  dtype: str
  tolerance: float
  diffs: list[ArrayDiff]
  not_mapped: list[tuple[str, str]]
  conversion: ConversionReport

  @property
  def passed(self) -> bool:
    return bool(self.diffs) and all(d.passed for d in self.diffs)

  @property
  def failures(self) -> list[ArrayDiff]:
    return [d for d in self.diffs if not d.passed]

  def format_table(self) -> str:
    """The human-readable table the `parity` command prints."""
    width = max([len(d.key) for d in self.diffs] + [20])
    lines = [f"parity of {self.fixture} ({self.dtype}); error = max|ours - ref| / "
             f"max(1, max|ref|), tolerance {self.tolerance:g}",
             f"{'reference array':<{width}}  {'shape':<16} {'max|ref|':>10} {'max abs diff':>12} "
             f"{'error':>10}  result"]
    for d in self.diffs:
      lines.append(f"{d.key:<{width}}  {str(d.shape):<16} {d.ref_max:>10.4g} {d.max_abs:>12.3e} "
                   f"{d.error:>10.3e}  {'ok' if d.passed else 'FAIL'}"
                   + (f"  [{d.note}]" if d.note else ""))
    for key, why in self.not_mapped:
      lines.append(f"{key:<{width}}  {why}")
    worst = max(self.diffs, key=lambda d: d.error, default=None)
    verdict = "PASS" if self.passed else "FAIL"
    lines.append(f"{verdict}: {len(self.diffs)} arrays compared, {len(self.failures)} over "
                 f"tolerance, {len(self.not_mapped)} not mapped"
                 + (f"; worst {worst.key} at {worst.error:.3e}" if worst else ""))
    return "\n".join(lines)


def _find_one(fixture_dir: str, patterns: tuple[str, ...], what: str) -> str:
  """The first pattern that matches exactly one file wins; ambiguity is an error."""
  folder = paths.as_path(fixture_dir)   # epath: a fixture may sit in a gs:// bucket
  for pattern in patterns:
    found = sorted(os.fspath(p) for p in folder.glob(pattern)
                   if not p.name.endswith("manifest.json"))
    if len(found) == 1:
      return found[0]
    if len(found) > 1:
      raise ValueError(f"{fixture_dir}: several {what} files match {pattern}: "
                       f"{[p.rsplit('/', 1)[-1] for p in found]}")
  raise FileNotFoundError(f"{fixture_dir}: no {what} file (looked for {list(patterns)})")


def _load_npz(path: str) -> dict[str, np.ndarray]:
  if not paths.as_path(path).is_file():
    raise FileNotFoundError(f"{path}: missing from the fixture")
  return dict(read_state_dict(path))


def map_reference(name: str, batch: int, config: ViLBertConfig) -> tuple[str | None, str]:
  """A reference output name (without the run) -> (our output name or None, note)."""
  if name.startswith("bert."):
    inner = name[len("bert."):]
    if inner in BACKBONE_OUTPUTS:
      return inner, ""
    return None, "not mapped: no intermediate of that name in our backbone"
  if name in UNUSED_HEADS:
    return None, UNUSED_HEADS[name]
  if name == "vil_binary_prediction" and batch % 2:
    return "bi_seq_relationship", ODD_BATCH_NOTE
  if name in ALL_OUTPUTS:
    if name in ("linguisic_prediction", "vision_prediction", "bi_seq_relationship") and (
        not config.with_pretraining_heads):
      return None, "not mapped: the config has with_pretraining_heads=False"
    return name, ""
  return None, "not mapped: no output of that name in our model"


@functools.partial(jax.jit, static_argnames=("config", "outputs"))
def _forward(params, inputs, task_ids, *, config: ViLBertConfig, outputs: tuple[str, ...]):
  # Module-level and keyed on (config, outputs): runs of the same shapes share one compile.
  return ViLBertForVLTasks(config).apply({"params": params}, **inputs, task_ids=task_ids,
                                         outputs=outputs, deterministic=True)


def _compare(key: str, ours_name: str, ours: np.ndarray, ref: np.ndarray, tolerance: float,
             note: str = "") -> ArrayDiff:
  if ours.shape != ref.shape:
    return ArrayDiff(key, ours_name, tuple(ref.shape), float("inf"), float("nan"),
                     float("inf"), False, f"shape mismatch: ours {ours.shape}, reference "
                     f"{ref.shape}" + (f"; {note}" if note else ""))
  diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
  max_abs = float(diff.max()) if diff.size else 0.0
  ref_max = float(np.abs(ref).max()) if ref.size else 0.0
  if not np.isfinite(max_abs):      # NaN/inf anywhere is a failure, never a silent pass
    max_abs = float("inf")
  error = max_abs / max(1.0, ref_max)
  return ArrayDiff(key, ours_name, tuple(ref.shape), max_abs, ref_max, error,
                   error <= tolerance, note)


def is_pretraining_fixture(fixture_dir: str | os.PathLike) -> bool:
  """Whether `fixture_dir` is laid out as a pretraining fixture (its `pretrain_inputs.npz`)."""
  return (paths.as_path(os.fspath(fixture_dir)) / PRETRAINING_INPUTS).is_file()


def _load_model(fixture_dir: str, float64: bool, scan_layers: bool, architecture: str
                ) -> tuple[ViLBertConfig, dict, ConversionReport]:
  """The fixture's config, and its state dict through the converter."""
  config_path = _find_one(fixture_dir, ("*config*.json",), "official config")
  config = read_official_config(config_path, dtype="float64" if float64 else "float32",
                                scan_layers=scan_layers)
  state_path = _find_one(fixture_dir, ("*state_dict*.npz", "*state_dict*.safetensors",
                                       "*state_dict*.bin", "*state_dict*.pt"), "state dict")
  params, conversion = import_official(read_state_dict(state_path), config,
                                       dtype=np.float64 if float64 else np.float32,
                                       source=state_path, architecture=architecture)
  return config, params, conversion


@functools.partial(jax.jit, static_argnames=("config",))
def _pretraining_forward(params, batch, *, config: ViLBertConfig):
  """The scores, and the losses of the official forward (objective 0: the labels as stored)."""
  scores = ViLBertForPretraining(config).apply(
      {"params": params}, **{ours: batch[key] for key, ours in
                             pretrain_losses.MODEL_INPUTS.items()}, deterministic=True)
  return scores, pretrain_losses.pretraining_losses(scores, batch, objective=0)


def _run_pretraining_parity(fixture_dir: str, tolerance: float, float64: bool,
                            scan_layers: bool) -> ParityReport:
  """`run_parity` on a pretraining fixture (see the module docstring)."""
  dtype = np.float64 if float64 else np.float32
  config, params, conversion = _load_model(fixture_dir, float64, scan_layers, "pretraining")
  inputs = _load_npz(os.path.join(fixture_dir, PRETRAINING_INPUTS))
  references = _load_npz(os.path.join(fixture_dir, "pretrain_outputs_fp64.npz" if float64
                                      else "pretrain_outputs.npz"))
  missing = [key for key in (*pretrain_losses.MODEL_INPUTS, *pretrain_losses.LABELS)
             if key not in inputs]
  if missing:
    raise ValueError(f"{fixture_dir}/{PRETRAINING_INPUTS}: missing {missing}")
  batch = {key: (array.astype(dtype) if np.issubdtype(array.dtype, np.floating)
                 else array.astype(np.int32)) for key, array in inputs.items()}
  pretrain_losses.check_batch(batch, config.v_target_size)
  scores, losses = jax.tree.map(np.asarray, _pretraining_forward(params, batch, config=config))

  diffs: list[ArrayDiff] = []
  not_mapped: list[tuple[str, str]] = []
  gradients: dict[str, int] = {}     # visual-target prefix -> number of gradient arrays
  for key, ref in references.items():
    prefix, _, name = key.partition(".")
    if key in PRETRAINING_SCORES:
      diffs.append(_compare(key, key, scores[key], ref, tolerance))
    elif prefix == "vt0" and name in PRETRAINING_LOSSES:
      diffs.append(_compare(key, name, losses[name].reshape(ref.shape), ref, tolerance,
                            "official forward on the stored labels (objective 0)"))
    elif prefix.startswith("vt") and name.startswith("grad."):
      gradients[prefix] = gradients.get(prefix, 0) + 1
    elif prefix.startswith("vt") and prefix != "vt0":
      not_mapped.append((key, f"not mapped: visual_target {prefix[2:]} is not implemented "
                              "(only 0, KL to the detector's class distribution)"))
    else:
      not_mapped.append((key, "not mapped: no pretraining score or loss of that name"))
  for prefix, count in gradients.items():
    not_mapped.append((f"{prefix}.grad.*", f"not compared: {count} gradients (this command "
                       "checks the scores and the losses)"))
  label = np.dtype(dtype).name + (", layers scanned" if scan_layers else "")
  return ParityReport(fixture=fixture_dir, dtype=label, tolerance=tolerance, diffs=diffs,
                      not_mapped=not_mapped, conversion=conversion)


def run_parity(fixture_dir: str | os.PathLike, *, tolerance: float = 1e-5,
               float64: bool = False, scan_layers: bool = False) -> ParityReport:
  """Loads a fixture through the converter, runs every run of its manifest and compares.

  Args:
    fixture_dir: a folder laid out as described in the module docstring (either layout).
    tolerance: largest allowed error per array (see the module docstring for the metric).
    float64: run in float64 against `outputs_fp64.npz`; needs `jax_enable_x64` already on
      (it changes every later computation of the process, so the caller decides).
    scan_layers: run the encoder as scans over stacked layers (`config.scan_layers`); the
      state dict is stacked on import, the reference and the tolerances are the same.

  Returns:
    The report; `report.passed` is False if any compared array exceeds the tolerance.
  """
  fixture_dir = os.fspath(fixture_dir).rstrip("/")
  paths.check_bucket(fixture_dir, "parity fixture")
  if float64 and not jax.config.jax_enable_x64:
    raise RuntimeError("float64 parity needs jax.config.update('jax_enable_x64', True) before "
                       "any computation (the `parity --float64` command does this)")
  if is_pretraining_fixture(fixture_dir):
    return _run_pretraining_parity(fixture_dir, tolerance, float64, scan_layers)
  dtype = np.float64 if float64 else np.float32
  config, params, conversion = _load_model(fixture_dir, float64, scan_layers, "tasks")
  manifest = paths.as_path(fixture_dir) / "manifest.json"
  if not manifest.is_file():
    raise FileNotFoundError(f"{manifest}: missing from the fixture")
  runs = json.loads(manifest.read_text()).get("runs")
  if not runs:
    raise ValueError(f"{fixture_dir}/manifest.json: no \"runs\" to compare")
  inputs = _load_npz(os.path.join(fixture_dir, "inputs.npz"))
  references = _load_npz(os.path.join(fixture_dir, "outputs_fp64.npz" if float64
                                      else "outputs.npz"))

  diffs: list[ArrayDiff] = []
  not_mapped: list[tuple[str, str]] = []
  # Longest run name first, so that a run called "a.b" is not taken for run "a".
  by_length = sorted(runs, key=len, reverse=True)
  keys_of_run: dict[str, list[str]] = {run: [] for run in runs}
  for key in references:
    run = next((r for r in by_length if key.startswith(r + ".")), None)
    if run is None:
      not_mapped.append((key, "not mapped: its run is not in manifest.json"))
    else:
      keys_of_run[run].append(key)

  for run, spec in runs.items():
    samples = np.asarray(spec["samples"], np.int64)
    batch = len(samples)
    run_inputs = {}
    for fixture_name, ours in INPUTS.items():
      array = inputs[fixture_name][samples]
      run_inputs[ours] = (array.astype(dtype) if np.issubdtype(array.dtype, np.floating)
                          else array.astype(np.int32))
    task_ids = None
    if config.task_specific_tokens:
      task_ids = inputs.get(f"task_ids.{run}")
      if task_ids is None:
        task_ids = np.asarray(spec["task_ids"]).reshape(batch, 1)
      task_ids = np.asarray(task_ids, np.int32)
    wanted: dict[str, tuple[str, str]] = {}
    for key in keys_of_run[run]:
      ours, note = map_reference(key[len(run) + 1:], batch, config)
      if ours is None:
        not_mapped.append((key, note))
      else:
        wanted[key] = (ours, note)
    if not wanted:
      continue
    outputs = _forward(params, run_inputs, task_ids, config=config,
                       outputs=tuple(sorted({ours for ours, _ in wanted.values()})))
    outputs = jax.tree.map(np.asarray, outputs)
    for key, (ours, note) in wanted.items():
      ref = references[key]
      if ours == "vision_logit" and ref.shape[:2] == run_inputs["image_mask"].shape:
        real = run_inputs["image_mask"].astype(bool)
        for part, select, extra in (("real", real, "real regions"),
                                    ("padded", ~real, "padded regions: -10000 + logit")):
          if select.any() and outputs[ours].shape == ref.shape:
            diffs.append(_compare(f"{key}[{part}]", ours, outputs[ours][select], ref[select],
                                  tolerance, extra))
        if outputs[ours].shape != ref.shape:
          diffs.append(_compare(key, ours, outputs[ours], ref, tolerance))
      else:
        diffs.append(_compare(key, ours, outputs[ours], ref, tolerance, note))
  label = np.dtype(dtype).name + (", layers scanned" if scan_layers else "")
  return ParityReport(fixture=fixture_dir, dtype=label, tolerance=tolerance, diffs=diffs,
                      not_mapped=not_mapped, conversion=conversion)
