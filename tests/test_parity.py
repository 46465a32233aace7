"""Parity with the official code on its fixture (tests/fixtures/), through the `parity` command.

The command runs in subprocesses: float64 needs `jax_enable_x64`, which would change every later
test of this process, and the subprocesses share a persistent compilation cache, so the edited
and the tampered fixture folders (same shapes) do not compile again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import ground_truth
from twelve_in_one.interop.parity import ODD_BATCH_NOTE, map_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = str(ground_truth.path("vilbert_tiny"))


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("jax_cache"))


def start_parity(fixture: str, cache: str, *flags: str) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_COMPILATION_CACHE_DIR=cache)
  return subprocess.Popen([sys.executable, "-m", "twelve_in_one.cli", "parity",
                           f"--fixture={fixture}", *flags],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
  try:
    stdout, stderr = process.communicate(timeout=300)
  except subprocess.TimeoutExpired:
    process.kill()
    raise
  return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def parity_command(fixture: str, cache: str, *flags: str) -> subprocess.CompletedProcess:
  return finish(start_parity(fixture, cache, *flags))


@pytest.fixture(scope="module")
def full_runs(compile_cache) -> dict[str, subprocess.CompletedProcess]:
  """The command on the shared fixture in float32 and in float64, started together: they are
  independent, and their compiles overlap on a machine with more than one core."""
  started = {"float32": start_parity(FIXTURE, compile_cache),
             "float64": start_parity(FIXTURE, compile_cache, "--float64", "--tolerance=1e-9")}
  return {dtype: finish(process) for dtype, process in started.items()}


def start_scanned_parity(cache: str, *flags: str) -> subprocess.Popen:
  """`run_parity` with the layers scanned (`scan_layers=True`), printed as the command prints
  it. In a subprocess of its own for the same reason as the command (float64)."""
  float64 = "--float64" in flags
  tolerance = 1e-9 if float64 else 1e-5
  script = ("import sys, jax\n"
            f"jax.config.update('jax_enable_x64', {float64})\n"
            "from twelve_in_one.interop.parity import run_parity\n"
            f"report = run_parity({FIXTURE!r}, tolerance={tolerance}, float64={float64}, "
            "scan_layers=True)\n"
            "print(report.conversion.format()); print(); print(report.format_table())\n"
            "sys.exit(0 if report.passed else 1)\n")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_COMPILATION_CACHE_DIR=cache)
  return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


ROW = re.compile(r"^(?P<key>\S+)\s+\((?P<shape>[\d, ]*)\)\s+(?P<ref>\S+)\s+(?P<abs>\S+)\s+"
                 r"(?P<error>\S+)\s+(?P<result>ok|FAIL)(?:\s+\[(?P<note>.*)\])?$")


def rows(stdout: str) -> dict[str, dict[str, str]]:
  """The command's table rows by reference key: shape, ref, abs, error, result, note."""
  return {m["key"]: m.groupdict() for m in map(ROW.match, stdout.splitlines()) if m}


def not_mapped(stdout: str) -> dict[str, str]:
  return {m[1]: m[2] for m in map(re.compile(r"^(\S+)\s+(not mapped: .*)$").match,
                                   stdout.splitlines()) if m}


def test_command_float32_every_output_within_1e5(full_runs):
  result = full_runs["float32"]
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.splitlines()[-1].startswith("PASS: 75 arrays compared, 0 over")
  table = rows(result.stdout)
  assert all(float(row["error"]) <= 1e-5 and row["result"] == "ok" for row in table.values())
  # Every reference array is compared, except the deliberately absent head.
  references = set(np.load(os.path.join(FIXTURE, "outputs.npz")).files)
  skipped = not_mapped(result.stdout)
  assert {key.split("[")[0] for key in table} | set(skipped) == references
  assert {key.split(".", 1)[1] for key in skipped} == {"linguisic_logit"}
  assert all("unused head left out" in why for why in skipped.values())
  # The odd-batch decision is stated on its row; masked regions are compared on their own.
  assert table["b1.vil_binary_prediction"]["note"] == ODD_BATCH_NOTE
  assert table["task12.vil_binary_prediction"]["note"] is None
  for run in ("task1", "b1"):
    assert float(table[f"{run}.vision_logit[real]"]["ref"]) < 100
    assert float(table[f"{run}.vision_logit[padded]"]["ref"]) > 9000
  assert "dropped 10 official parameters" in result.stdout      # the conversion report


def test_another_layout_renamed_run_reordered_samples(tmp_path, compile_cache, full_runs):
  """Nothing depends on the shared fixture's run names, sample order or task-id keys: a run
  `reordered` of samples [2, 3, 0, 1] with task ids only in the manifest, whose reference is
  the official task1 output permuted (NLVR2 pairs (2,3), (0,1) are task1's rows 1, 0)."""
  for name in ("tiny_config.json", "tiny_state_dict.npz"):
    shutil.copy(os.path.join(FIXTURE, name), tmp_path / name)
  order = [2, 3, 0, 1]
  (tmp_path / "manifest.json").write_text(json.dumps(
      {"runs": {"reordered": {"samples": order, "task_ids": [1, 1, 1, 1]}}}))
  inputs = np.load(os.path.join(FIXTURE, "inputs.npz"))
  np.savez(tmp_path / "inputs.npz", **{k: inputs[k] for k in inputs.files
                                       if not k.startswith("task_ids.")})
  outputs = np.load(os.path.join(FIXTURE, "outputs.npz"))
  derived = {}
  for key in outputs.files:
    if key.startswith("task1."):
      name = key[len("task1."):]
      select = [1, 0] if name == "vil_binary_prediction" else order
      derived[f"reordered.{name}"] = outputs[key][select]
  np.savez(tmp_path / "outputs.npz", **derived)

  result = parity_command(str(tmp_path), compile_cache)
  assert result.returncode == 0, result.stdout + result.stderr
  table = rows(result.stdout)
  assert {key.split(".")[0] for key in table} == {"reordered"}
  assert len(table) == len(derived)      # linguisic_logit out, vision_logit split in two
  assert all(float(row["error"]) <= 1e-5 for row in table.values())
  assert list(not_mapped(result.stdout)) == ["reordered.linguisic_logit"]


def test_reference_names_map_to_our_outputs():
  from twelve_in_one.models import ViLBertConfig
  config = ViLBertConfig.from_json(os.path.join(FIXTURE, "tiny_config.json"))
  assert map_reference("vil_prediction", 4, config) == ("vil_prediction", "")
  assert map_reference("bert.pooled_output_v", 3, config) == ("pooled_output_v", "")
  assert map_reference("vil_binary_prediction", 6, config) == ("vil_binary_prediction", "")
  assert map_reference("vil_binary_prediction", 3, config) == ("bi_seq_relationship",
                                                               ODD_BATCH_NOTE)
  assert map_reference("linguisic_logit", 4, config)[0] is None
  assert "unused head" in map_reference("linguisic_logit", 4, config)[1]
  assert map_reference("bert.attention_probs", 4, config)[0] is None
  no_heads = config.replace(with_pretraining_heads=False)
  assert map_reference("vision_prediction", 4, no_heads)[0] is None


def test_command_float64_within_1e9_exits_zero(full_runs):
  result = full_runs["float64"]
  assert result.returncode == 0, result.stdout + result.stderr
  table = rows(result.stdout)
  assert "(float64)" in result.stdout and len(table) == 75
  assert "odd batch" in table["b1.vil_binary_prediction"]["note"]
  for key, row in table.items():
    assert float(row["error"]) <= 1e-9, (key, row)


def test_command_fails_on_a_tampered_fixture(tmp_path, compile_cache, full_runs):
  for name in ("tiny_config.json", "inputs.npz", "outputs.npz", "manifest.json"):
    shutil.copy(os.path.join(FIXTURE, name), tmp_path / name)
  state = dict(np.load(os.path.join(FIXTURE, "tiny_state_dict.npz")))
  state["vil_prediction.logit_fc.3.bias"] = state["vil_prediction.logit_fc.3.bias"].copy()
  state["vil_prediction.logit_fc.3.bias"][0] += 1e-3        # one answer's bias, 1e-3 off
  np.savez(tmp_path / "tiny_state_dict.npz", **state)
  result = parity_command(str(tmp_path), compile_cache)
  assert result.returncode == 1, result.stdout + result.stderr
  table = rows(result.stdout)
  failed = sorted(key for key, row in table.items() if row["result"] == "FAIL")
  assert failed == sorted(f"{run}.vil_prediction" for run in
                          json.load(open(tmp_path / "manifest.json"))["runs"])
  assert result.stdout.splitlines()[-1].startswith(f"FAIL: 75 arrays compared, {len(failed)} over")


@pytest.fixture(scope="module")
def scanned_runs(compile_cache) -> dict[str, subprocess.CompletedProcess]:
  """Parity with the encoder's layers scanned (`config.scan_layers`), float32 and float64."""
  started = {"float32": start_scanned_parity(compile_cache),
             "float64": start_scanned_parity(compile_cache, "--float64")}
  return {dtype: finish(process) for dtype, process in started.items()}


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("float64", 1e-9)])
def test_scanned_layers_hold_the_same_tolerances(scanned_runs, full_runs, dtype, tolerance):
  """The state dict stacked on import, the same reference arrays, the same tolerances."""
  result = scanned_runs[dtype]
  assert result.returncode == 0, result.stdout + result.stderr
  assert f"({dtype}, layers scanned)" in result.stdout
  assert result.stdout.splitlines()[-1].startswith("PASS: 75 arrays compared, 0 over")
  table, unrolled = rows(result.stdout), rows(full_runs[dtype].stdout)
  assert table.keys() == unrolled.keys()
  for key, row in table.items():
    assert float(row["error"]) <= tolerance and row["result"] == "ok", (key, row)
  assert not_mapped(result.stdout) == not_mapped(full_runs[dtype].stdout)
