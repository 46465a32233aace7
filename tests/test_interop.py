"""Official checkpoint import / export, file readers and our orbax checkpoints.

Uses the official fixture's state dict (written by the official code; tests/fixtures/).
Nothing here runs the model.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import ground_truth
from twelve_in_one.interop import checkpoint_io
from twelve_in_one.interop.checkpoint_io import (CheckpointError, load_params, read_state_dict,
                                                 save_params, write_npz, write_safetensors,
                                                 write_torch)
from twelve_in_one.interop.names import TIED_DECODER, WORD_EMBEDDINGS
from twelve_in_one.interop.official import (TIED_ALIASES, export_official, import_official,
                                            official_init, official_param_table)
from twelve_in_one.models import ViLBertConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = str(ground_truth.path("vilbert_tiny"))

HEADS = ("vil_prediction.", "vil_prediction_gqa.", "vil_binary_prediction.", "vil_logit.",
         "vil_tri_prediction.", "vision_logit.", "linguisic_logit.")
TASK_EMBEDDINGS = "bert.embeddings.task_embeddings.weight"


@pytest.fixture(scope="module")
def config() -> ViLBertConfig:
  return ViLBertConfig.from_json(os.path.join(FIXTURE, "tiny_config.json"))


@pytest.fixture(scope="module")
def state() -> "collections.OrderedDict[str, np.ndarray]":
  return read_state_dict(os.path.join(FIXTURE, "tiny_state_dict.npz"))


@pytest.fixture(scope="module")
def imported(state, config):
  return import_official(state, config, source="tiny_state_dict.npz")


def leaves(tree) -> dict[tuple, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_bitwise_equal(a, b) -> None:
  la, lb = leaves(a), leaves(b)
  assert la.keys() == lb.keys()
  for key in la:
    assert la[key].dtype == lb[key].dtype, key
    assert la[key].shape == lb[key].shape, key
    assert np.array_equal(la[key], lb[key]), key


# ---------------------------------------------------------------------------------- import
def test_import_fixture_npz(imported, state, config):
  params, report = imported
  table = official_param_table(config)
  assert sorted(report.loaded) == sorted(table)
  assert report.missing == [] and report.unexpected == []
  assert report.tied == [TIED_DECODER]
  assert sorted(report.unused) == sorted(n for n in state if "q_dense" in n or
                                         n.startswith("linguisic_logit."))
  # Every loaded value lands where `official_name` says, transposed for kernels.
  flat = leaves(params)
  for name, slot in table.items():
    ours = flat[jax.tree_util.keystr(tuple(jax.tree_util.DictKey(k) for k in slot.path))]
    assert np.array_equal(ours, state[name].T if slot.transpose else state[name]), name
  text = report.format()
  assert "245 parameters loaded" in text and "linguisic_logit.* (2 params)" in text


def test_import_fixture_bin_equals_npz(imported, config):
  pytest.importorskip("torch")
  params, report = import_official(read_state_dict(os.path.join(FIXTURE, "tiny_state_dict.bin")),
                                   config)
  assert_trees_bitwise_equal(params, imported[0])
  assert report.tied == [TIED_DECODER] and not report.missing


def test_legacy_gamma_beta_and_module_prefix(state, config, imported):
  legacy = collections.OrderedDict()
  for name, value in state.items():
    if ".LayerNorm" in name:
      name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
    legacy["module." + name] = value
  params, report = import_official(legacy, config)
  assert_trees_bitwise_equal(params, imported[0])
  assert len(report.renamed) == len(state)
  assert ("module.bert.embeddings.LayerNorm.gamma", "bert.embeddings.LayerNorm.weight") in (
      report.renamed)


def test_two_spellings_of_one_name_is_an_error(state, config):
  both = collections.OrderedDict(state)
  both["module.vil_logit.bias"] = state["vil_logit.bias"]
  with pytest.raises(ValueError, match=r"'vil_logit.bias' and 'module.vil_logit.bias'"):
    import_official(both, config)


def test_missing_heads_are_reported_and_initialised_officially(state, config, imported):
  pretrained = collections.OrderedDict(
      (k, v) for k, v in state.items() if not k.startswith(HEADS) and k != TASK_EMBEDDINGS)
  params, report = import_official(pretrained, config, rng=3)
  expected = sorted(n for n in official_param_table(config)
                    if n.startswith(HEADS) or n == TASK_EMBEDDINGS)
  assert sorted(report.missing) == expected
  text = report.format()
  assert "vil_prediction.* (6 params)" in text and TASK_EMBEDDINGS in text
  assert "initialised as the official code does" in text

  # Official init: N(0, initializer_range) weights and embeddings, zero biases, LayerNorm 1/0.
  std = config.initializer_range
  kernel = np.asarray(params["vil_prediction"]["logit_fc_3"]["kernel"])     # 36 x 3129
  assert abs(kernel.mean()) < 3 * std / np.sqrt(kernel.size)
  assert abs(kernel.std() / std - 1) < 0.02
  assert np.asarray(params["bert"]["embeddings"]["task_embeddings"]["embedding"]).std() > 0
  assert not np.any(params["vil_prediction"]["logit_fc_3"]["bias"])
  assert np.all(params["vil_prediction"]["logit_fc_2"]["scale"] == 1)
  assert not np.any(params["vil_prediction"]["logit_fc_2"]["bias"])
  # What was in the file is untouched; the draw is reproducible from the seed.
  assert_trees_bitwise_equal(params["bert"]["encoder"], imported[0]["bert"]["encoder"])
  again, _ = import_official(pretrained, config, rng=3)
  assert_trees_bitwise_equal(params, again)
  other, _ = import_official(pretrained, config, rng=4)
  assert not np.array_equal(other["vil_logit"]["kernel"], params["vil_logit"]["kernel"])


def test_unexpected_keys_error_unless_allowed(state, config, imported):
  extra = collections.OrderedDict(state)
  extra["vil_prediction_vcr.weight"] = np.zeros((2, 18), np.float32)
  with pytest.raises(ValueError, match=r"1 unexpected key\(s\)[\s\S]*vil_prediction_vcr.weight"):
    import_official(extra, config)
  params, report = import_official(extra, config, allow_unexpected=True)
  assert report.unexpected == ["vil_prediction_vcr.weight"]
  assert "vil_prediction_vcr.weight" in report.format()
  assert_trees_bitwise_equal(params, imported[0])


def test_unexpected_task_embeddings_hint_at_the_config(state, config):
  no_tokens = config.replace(task_specific_tokens=False)
  with pytest.raises(ValueError, match=r"task_embeddings.weight \(the checkpoint has task "
                                       r"tokens: set task_specific_tokens true\)"):
    import_official(state, no_tokens)


def test_shape_mismatch_names_the_key_and_both_shapes(state, config):
  bad = collections.OrderedDict(state)
  bad["bert.v_embeddings.image_embeddings.weight"] = np.zeros((40, 100), np.float32)
  with pytest.raises(ValueError) as error:
    import_official(bad, config, source="bad.npz")
  message = str(error.value)
  assert "bert.v_embeddings.image_embeddings.weight" in message
  assert "(40, 100)" in message and "(40, 2048)" in message and "bad.npz" in message


def test_tied_decoder_must_equal_the_word_embeddings(state, config, imported):
  bad = collections.OrderedDict(state)
  bad[TIED_DECODER] = state[TIED_DECODER] + 1
  with pytest.raises(ValueError, match="differs from bert.embeddings.word_embeddings.weight"):
    import_official(bad, config)
  decoder_only = collections.OrderedDict((k, v) for k, v in state.items() if k != WORD_EMBEDDINGS)
  params, report = import_official(decoder_only, config)
  assert_trees_bitwise_equal(params, imported[0])
  assert any("taken from the tied" in note for note in report.notes)


# ------------------------------------------------------------------------------- export
def test_export_round_trip_is_bitwise(imported, state, config):
  params, _ = imported
  exported = export_official(params, config)
  assert list(sorted(exported)) == sorted(state)          # every official name, q_dense too
  assert exported[TIED_DECODER] is exported[WORD_EMBEDDINGS]
  for name in state:
    if "q_dense" not in name and not name.startswith("linguisic_logit."):
      assert np.array_equal(exported[name], state[name]), name
  back, report = import_official(exported, config)
  assert_trees_bitwise_equal(back, params)
  assert not report.missing

  fresh = official_init(config, 7)
  back, _ = import_official(export_official(fresh, config, include_unused=False), config)
  assert_trees_bitwise_equal(back, fresh)


def test_export_checks_the_tree_against_the_config(imported, config):
  with pytest.raises(ValueError, match=r"bert/encoder/layer_0/attention/self/query/kernel: "
                                       r"shape \(24, 24\), but the config needs \(48, 48\)"):
    export_official(imported[0], config.replace(hidden_size=48, num_attention_heads=3,
                                                 num_hidden_layers=5))


@pytest.mark.parametrize("suffix", [".npz", ".bin", ".safetensors"])
def test_written_files_read_back(tmp_path, imported, config, suffix):
  if suffix == ".bin":
    torch = pytest.importorskip("torch")
  exported = export_official(imported[0], config)
  path = tmp_path / f"state{suffix}"
  checkpoint_io.write_state_dict(path, exported, tied=TIED_ALIASES)
  back = read_state_dict(path)
  # safetensors stores names sorted; the other two formats keep the order.
  assert (sorted(back) == sorted(exported)) if suffix == ".safetensors" else (
      list(back) == list(exported))
  for name in exported:
    assert back[name].dtype == exported[name].dtype and np.array_equal(back[name],
                                                                       exported[name]), name
  if suffix == ".bin":
    raw = torch.load(path, weights_only=True)        # a plain PyTorch state dict, tie kept
    assert raw[TIED_DECODER].data_ptr() == raw[WORD_EMBEDDINGS].data_ptr()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


# ------------------------------------------------------------------- unreadable files
SMALL = collections.OrderedDict(a=np.arange(50_000, dtype=np.float32),
                                b=np.ones((30, 40), np.float32))


@pytest.mark.parametrize("suffix,writer,label", [
    (".npz", write_npz, "npz"),
    (".bin", write_torch, "PyTorch"),
    (".safetensors", write_safetensors, "safetensors"),
])
def test_truncated_or_corrupt_files_give_a_clear_error(tmp_path, suffix, writer, label):
  if suffix == ".bin":
    pytest.importorskip("torch")
  path = tmp_path / f"model{suffix}"
  writer(path, SMALL)
  data = path.read_bytes()
  for cut in (len(data) // 2, 100, 7):
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=rf"{path}: cannot read it as .*{label}.*"
                                              r"truncated"):
      read_state_dict(path)
  path.write_bytes(b"\x00garbage" * 100)
  with pytest.raises(CheckpointError, match=str(path)):
    read_state_dict(path)


def test_unknown_suffix_and_missing_torch(tmp_path, monkeypatch):
  with pytest.raises(CheckpointError, match=r"model.h5: unknown checkpoint format"):
    read_state_dict(tmp_path / "model.h5")
  path = tmp_path / "model.bin"
  monkeypatch.setitem(sys.modules, "torch", None)        # `import torch` now fails
  # Reading needs no torch (tests/test_torch_pickle.py); writing the torch format does.
  with pytest.raises(CheckpointError, match=r"needs torch, which is not installed.*\.npz or "
                                            r"\.safetensors"):
    checkpoint_io.write_state_dict(path, SMALL)
  assert not path.exists()


# --------------------------------------------------------------------- our checkpoints
def test_orbax_save_load_round_trip(tmp_path, imported, config):
  params, report = imported
  path = tmp_path / "ckpt"
  save_params(path, params, config, meta={"conversion": report.to_json()})
  restored, restored_config, meta = load_params(path)
  assert_trees_bitwise_equal(restored, params)
  assert restored_config == config
  assert meta["conversion"]["tied"] == [TIED_DECODER]
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]          # no temporary directories left

  with pytest.raises(FileExistsError, match="already exists"):
    save_params(path, params, config)
  other = official_init(config, 1)
  save_params(path, other, config.replace(dtype="bfloat16"), overwrite=True)
  restored, restored_config, _ = load_params(path)
  assert_trees_bitwise_equal(restored, other)
  assert restored_config.dtype == "bfloat16"
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]

  with pytest.raises(FileNotFoundError, match="not a params checkpoint"):
    load_params(tmp_path)


def convert_command(*flags: str) -> subprocess.CompletedProcess:
  # A subprocess: command modules define absl flags at import, and two commands' flags in one
  # process (this test session) could collide.
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "twelve_in_one.cli", "convert", *flags], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def test_convert_command_import_then_export(tmp_path, state):
  config_json = os.path.join(FIXTURE, "tiny_config.json")
  result = convert_command(f"--input={os.path.join(FIXTURE, 'tiny_state_dict.npz')}",
                           f"--config={config_json}", f"--output={tmp_path / 'ours'}")
  assert result.returncode == 0, result.stderr
  assert "245 parameters loaded" in result.stdout and "linguisic_logit.*" in result.stdout
  fmt, name = ("torch", "pytorch_model.bin") if _has_torch() else ("npz", "state_dict.npz")
  result = convert_command("--direction=export", f"--input={tmp_path / 'ours'}",
                           f"--output={tmp_path / 'exported'}", f"--format={fmt}",
                           f"--config={config_json}")
  assert result.returncode == 0, result.stderr
  back = read_state_dict(tmp_path / "exported" / name)
  assert sorted(back) == sorted(state)
  assert all(np.array_equal(back[k], state[k]) for k in state
             if "q_dense" not in k and not k.startswith("linguisic_logit."))
  assert ViLBertConfig.from_json(tmp_path / "exported" / "config.json") == (
      ViLBertConfig.from_json(config_json))

  result = convert_command(f"--input={os.path.join(FIXTURE, 'tiny_state_dict.npz')}",
                           f"--output={tmp_path / 'other'}")
  assert result.returncode != 0 and "--config" in result.stderr
  assert not os.path.exists(tmp_path / "other")


def _has_torch() -> bool:
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True
