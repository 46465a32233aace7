"""The pretraining objective against the official `BertForMultiModalPreTraining` fixture.

The fixture (`shared/fixtures/vilbert_pretrain_tiny`) is the official model, run in float32
and in float64 on one masked batch: prediction scores, the three losses and the gradient of
their sum. The state dict enters through the interop import path (`architecture="pretraining"`).

Tolerances. The float32 reference itself is one float32 rounding of the exact (float64)
result; its error against float64 is recorded, per array, by the fixture's two output files.
Our float32 result is another such rounding, so it is compared with the float64 reference:

* scores and losses: error max|ours - ref| / max(1, max|ref|) (the parity metric) within the
  float32 parity bound 1e-5, or twice the fixture's own error for that array if that is larger;
* gradients: max|ours - ref| / max|ref| per tensor, the same rule: 1e-5, or twice the recorded
  error of that tensor where the official float32 run is itself close to 1e-5 (the last text
  layer's attention query gradients, where softmax's derivative cancels);
* attention key biases: zero in exact arithmetic (softmax ignores a shift), so their float32
  values are rounding noise; each must stay within twice the largest noise the official float32
  run shows on them, absolutely;
* float64: 1e-9 by the same metrics; key biases within 1e-9 of the scale of their own layer's
  key-weight gradient, absolutely.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from twelve_in_one.interop.checkpoint_io import read_official_config, read_state_dict
from twelve_in_one.interop.names import TIED_DECODER, WORD_EMBEDDINGS, official_name
from twelve_in_one.interop.official import abstract_params, export_official, import_official
from twelve_in_one.models.pretraining import PRETRAINING_SCORES, ViLBertForPretraining
from twelve_in_one.pretrain import losses as pretrain_losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOAT32_BOUND = 1e-5     # the float32 parity bound (tests/test_parity.py)
FLOAT64_BOUND = 1e-9     # the float64 parity bound (tests/test_parity.py)
LOSSES = ("masked_lm_loss", "masked_img_loss", "next_sentence_loss")
KEY_BIASES = (".key.bias", ".key1.bias", ".key2.bias")


def scaled_error(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def relative_error(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def float32_tolerance(recorded: float) -> float:
  """The float32 bound, or two roundings of the size the official run shows, if larger."""
  return max(FLOAT32_BOUND, 2 * recorded)


@pytest.fixture(scope="module")
def fixture(pretrain_fixture_dir):
  return pretrain_fixture_dir


@pytest.fixture(scope="module")
def reference(fixture):
  """(float32 outputs, float64 outputs) of the official run."""
  return (dict(np.load(fixture / "pretrain_outputs.npz")),
          dict(np.load(fixture / "pretrain_outputs_fp64.npz")))


def _run(fixture, dtype: str) -> dict:
  """Our scores, losses and gradients (by official name) on the fixture's batch."""
  config = read_official_config(fixture / "pretrain_config.json", dtype=dtype)
  params, report = import_official(read_state_dict(str(fixture / "pretrain_state_dict.npz")),
                                   config, dtype=dtype, architecture="pretraining")
  assert not report.missing and report.tied == [TIED_DECODER]
  batch = {key: value.astype(dtype) if value.dtype.kind == "f" else value.astype(np.int32)
           for key, value in np.load(fixture / "pretrain_inputs.npz").items()}
  model = ViLBertForPretraining(config)
  # Batches are arguments, not constants: other batches of these shapes reuse the compile.
  loss_and_grads = jax.jit(jax.value_and_grad(
      lambda p, b: pretraining_loss(model.apply, p, b), has_aux=True))
  (total, aux), grads = loss_and_grads(params, batch)
  inputs = {ours: batch[key] for key, ours in pretrain_losses.MODEL_INPUTS.items()}
  scores = jax.jit(lambda p, x: model.apply({"params": p}, **x))(params, inputs)
  by_name = {}
  for path, grad in traverse_util.flatten_dict(grads).items():
    name, transpose = official_name(path)
    by_name[name] = np.asarray(grad).T if transpose else np.asarray(grad)
  return dict(total=np.asarray(total), losses=jax.tree.map(np.asarray, aux),
              scores=jax.tree.map(np.asarray, scores), grads=by_name, batch=batch,
              params=params, loss_and_grads=loss_and_grads)


def pretraining_loss(apply_fn, params, batch):
  """The fixture's losses: the official forward on the stored labels (objective 0)."""
  return pretrain_losses.pretraining_loss(apply_fn, params, batch, objective=0)


@pytest.fixture(scope="module")
def float32_run(fixture):
  return _run(fixture, "float32")


@pytest.fixture(scope="module")
def float64_run(fixture):
  with jax.enable_x64(True):
    return _run(fixture, "float64")


def test_recorded_errors_are_those_of_the_manifest(fixture, reference):
  """The two output files are the runs the manifest describes; its largest relative errors are
  the key biases', which is why those are compared absolutely."""
  ref32, ref64 = reference
  manifest = json.loads((fixture / "pretrain_manifest.json").read_text())
  for key, value in manifest["losses_fp32"].items():
    assert float(ref32[key][0]) == pytest.approx(value, rel=1e-7), key
  for key, value in manifest["fp32_vs_fp64_max_rel"].items():
    assert key.endswith(KEY_BIASES)
    assert relative_error(ref32[key], ref64[key]) == pytest.approx(value, rel=1e-6), key
  assert sum(key.startswith("vt0.grad.") for key in ref64) == manifest["num_grads"]


def test_prediction_scores_and_losses_match_float32(float32_run, reference):
  ref32, ref64 = reference
  ours = dict(float32_run["scores"])
  ours.update({f"vt0.{name}": float32_run["losses"][name] for name in LOSSES})
  assert set(ours) == set(PRETRAINING_SCORES) | {f"vt0.{name}" for name in LOSSES}
  for key, value in ours.items():
    recorded = scaled_error(ref32[key], ref64[key])
    assert recorded < FLOAT32_BOUND / 2, key        # the bound is the tolerance used
    error = scaled_error(np.reshape(value, ref64[key].shape), ref64[key])
    assert error <= float32_tolerance(recorded), (key, error, recorded)
  total = sum(float(float32_run["losses"][name]) for name in LOSSES)   # img_weight 1
  assert float(float32_run["total"]) == pytest.approx(total, rel=1e-7)


def test_gradients_match_float32(float32_run, reference):
  ref32, ref64 = reference
  grads = float32_run["grads"]
  assert {f"vt0.grad.{name}" for name in grads} == {k for k in ref64 if ".grad." in k}
  widened = []
  for name, grad in grads.items():
    if name.endswith(KEY_BIASES):
      continue
    key = f"vt0.grad.{name}"
    recorded = relative_error(ref32[key], ref64[key])
    if float32_tolerance(recorded) > FLOAT32_BOUND:
      widened.append(name)
    error = relative_error(grad, ref64[key])
    assert error <= float32_tolerance(recorded), (name, error, recorded)
  # Only where the official float32 run is itself within a factor 2 of the bound.
  assert len(widened) <= 3, widened


def test_key_bias_gradients_are_rounding_noise_float32(float32_run, reference):
  ref32, ref64 = reference
  names = [name for name in float32_run["grads"] if name.endswith(KEY_BIASES)]
  assert len(names) == 5 + 3 + 2 * 2      # text, visual and both sides of each co-attention
  noise = max(np.abs(ref32[f"vt0.grad.{name}"]).max() for name in names)
  assert 0 < noise < 1e-6
  for name in names:
    assert np.abs(ref64[f"vt0.grad.{name}"]).max() < 1e-6 * noise, name   # zero in exact math
    assert np.abs(float32_run["grads"][name]).max() <= 2 * noise, name


def test_float64_within_1e9(float64_run, reference):
  _, ref64 = reference
  for key in PRETRAINING_SCORES:
    assert scaled_error(float64_run["scores"][key], ref64[key]) <= FLOAT64_BOUND, key
  for name in LOSSES:
    assert scaled_error(float64_run["losses"][name], ref64[f"vt0.{name}"][0]) <= FLOAT64_BOUND
  for name, grad in float64_run["grads"].items():
    assert grad.dtype == np.float64
    ref = ref64[f"vt0.grad.{name}"]
    if name.endswith(KEY_BIASES):
      scale = np.abs(ref64[f"vt0.grad.{name[:-len('bias')]}weight"]).max()
      assert np.abs(grad - ref).max() <= FLOAT64_BOUND * scale, name
    else:
      assert relative_error(grad, ref) <= FLOAT64_BOUND, name


def _numpy_losses(scores: dict, batch: dict, aligned_only: bool) -> dict[str, float]:
  """The official formulas in float64 numpy, labels of misaligned pairs dropped if asked."""
  keep = (batch["next_sentence_label"] == 0)[:, None] if aligned_only else True
  log_softmax = lambda x: x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(
      -1, keepdims=True)) - x.max(-1, keepdims=True)
  tokens = (batch["masked_lm_labels"] >= 0) & keep
  token_log_probs = log_softmax(scores["prediction_scores_t"])
  lm = -np.mean(token_log_probs[tokens, batch["masked_lm_labels"][tokens]])
  regions = (batch["image_label"] == 1) & keep
  target = batch["image_target_kl"].astype(np.float64)
  kl = (np.where(target > 0, target * np.log(np.where(target > 0, target, 1)), 0)
        - target * log_softmax(scores["prediction_scores_v"][:, 1:])).sum(-1)
  pair_log_probs = log_softmax(scores["seq_relationship_score"])
  nsp = -np.mean(pair_log_probs[np.arange(len(tokens)), batch["next_sentence_label"]])
  return {"masked_lm_loss": lm, "masked_img_loss": kl[regions].mean(),
          "next_sentence_loss": nsp}


def test_objective_1_drops_the_masking_labels_of_misaligned_pairs(float32_run, reference):
  """`train_concap.py --objective 1` (the README's): the fixture's pairs 1 and 3 are
  misaligned, so only pairs 0 and 2 train the masked-token and masked-region losses."""
  _, ref64 = reference
  batch = float32_run["batch"]
  assert list(batch["next_sentence_label"]) == [0, 1, 0, 1]
  official_scores = {key: ref64[key] for key in PRETRAINING_SCORES}
  expected = _numpy_losses(official_scores, batch, aligned_only=True)
  everything = _numpy_losses(official_scores, batch, aligned_only=False)
  for name in LOSSES:      # the numpy formulas reproduce the recorded objective-0 losses
    assert everything[name] == pytest.approx(float(ref64[f"vt0.{name}"][0]), rel=1e-12)
  ours = pretrain_losses.pretraining_losses(float32_run["scores"], batch, objective=1,
                                            img_weight=0.5)
  for name in LOSSES:
    assert scaled_error(ours[name], expected[name]) <= FLOAT32_BOUND, name
  assert abs(expected["masked_img_loss"] - everything["masked_img_loss"]) > 0.1
  assert abs(expected["masked_lm_loss"] - everything["masked_lm_loss"]) > 0.05
  assert int(ours["num_masked_regions"]) == 5 and int(ours["num_masked_tokens"]) == 4
  assert float(ours["loss"]) == pytest.approx(
      float(ours["masked_lm_loss"]) + 0.5 * float(ours["masked_img_loss"])
      + float(ours["next_sentence_loss"]), rel=1e-6)
  no_alignment = pretrain_losses.pretraining_losses(float32_run["scores"], batch, objective=2)
  assert float(no_alignment["next_sentence_loss"]) == 0.0
  assert float(no_alignment["masked_lm_loss"]) == pytest.approx(
      float(float32_run["losses"]["masked_lm_loss"]), rel=1e-6)
  with pytest.raises(ValueError, match="objective=3"):
    pretrain_losses.pretraining_losses(float32_run["scores"], batch, objective=3)


def test_nothing_masked_gives_zero_masking_losses_not_nan(float32_run):
  """The official region loss divides by the number of masked regions (0 / 0 = NaN with none);
  ours is 0 there, with zero gradient, and the other losses still train."""
  scores, batch = float32_run["scores"], dict(float32_run["batch"])
  batch["image_label"] = np.full_like(batch["image_label"], -1)
  batch["masked_lm_labels"] = np.full_like(batch["masked_lm_labels"], -1)
  region = lambda s: pretrain_losses.masked_region_kl_loss(s, batch["image_target_kl"],
                                                           batch["image_label"])
  value, grad = jax.value_and_grad(region)(jnp.asarray(scores["prediction_scores_v"]))
  assert float(value) == 0.0 and not np.asarray(grad).any()
  token = lambda s: pretrain_losses.masked_lm_loss(s, batch["masked_lm_labels"])
  value, grad = jax.value_and_grad(token)(jnp.asarray(scores["prediction_scores_t"]))
  assert float(value) == 0.0 and not np.asarray(grad).any()
  # Through the whole model: finite, and the alignment loss alone remains.
  (total, aux), grads = float32_run["loss_and_grads"](float32_run["params"], batch)
  assert float(aux["masked_img_loss"]) == 0.0 and float(aux["masked_lm_loss"]) == 0.0
  assert float(total) == float(aux["next_sentence_loss"]) == pytest.approx(
      float(float32_run["losses"]["next_sentence_loss"]), rel=1e-6)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert any(np.asarray(g).any() for g in jax.tree.leaves(grads))


def test_batch_shapes_are_checked_by_name(float32_run):
  batch = dict(float32_run["batch"])
  pretrain_losses.check_batch(batch, 1601)
  wrong = dict(batch, image_label=batch["image_label"][:, :-1])
  with pytest.raises(ValueError, match=r"image_label has shape \[4, 6\], expected \[4, 7\]"):
    pretrain_losses.check_batch(wrong)
  with pytest.raises(ValueError, match="image_target_kl"):
    pretrain_losses.check_batch(batch, 1600)
  with pytest.raises(ValueError, match=r"missing key\(s\) \['next_sentence_label'\]"):
    pretrain_losses.check_batch({k: v for k, v in batch.items() if k != "next_sentence_label"})


def test_state_dict_round_trips_through_official_names(fixture):
  config = read_official_config(fixture / "pretrain_config.json")
  state = dict(read_state_dict(str(fixture / "pretrain_state_dict.npz")))
  params, report = import_official(state, config, architecture="pretraining")
  assert sorted(report.unused) == sorted(k for k in state if ".q_dense" in k)
  exported = export_official(params, config, architecture="pretraining")
  assert set(exported) == set(state)          # no task head, no linguisic_logit
  assert exported[TIED_DECODER] is exported[WORD_EMBEDDINGS]
  for name, value in state.items():
    if ".q_dense" not in name:                # never in forward: re-initialised on export
      assert exported[name].dtype == value.dtype and np.array_equal(exported[name], value), name
  # A task-model checkpoint is not a pretraining one: its heads are named as the reason.
  with pytest.raises(ValueError, match=r"vil_logit.weight \(a task-model parameter"):
    import_official(dict(state, **{"vil_logit.weight": np.zeros((1, 18), np.float32)}), config,
                    architecture="pretraining")


def test_pretraining_tree_is_the_bert_and_cls_of_the_task_model(fixture):
  """So pretrained parameters drop into the task model by path, and both share the names."""
  config = read_official_config(fixture / "pretrain_config.json")
  shapes = lambda tree: {path: leaf.shape for path, leaf in
                         traverse_util.flatten_dict(tree).items()}
  pretraining = shapes(abstract_params(config, "pretraining"))
  tasks = shapes(abstract_params(config, "tasks"))
  assert pretraining == {p: s for p, s in tasks.items() if p[0] in ("bert", "cls")}
  with pytest.raises(ValueError, match="task_specific_tokens=True"):
    abstract_params(config.replace(task_specific_tokens=True), "pretraining")


ROW = re.compile(r"^(?P<key>\S+)\s+\([\d, ]*\)\s+\S+\s+\S+\s+(?P<error>\S+)\s+"
                 r"(?P<result>ok|FAIL)")


def rows(stdout: str) -> dict[str, tuple[str, str]]:
  """The command's table: reference key -> (error, result)."""
  return {m["key"]: (m["error"], m["result"]) for m in map(ROW.match, stdout.splitlines()) if m}


def _parity(fixture: str, cache: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_COMPILATION_CACHE_DIR=cache)
  return subprocess.run([sys.executable, "-m", "twelve_in_one.cli", "parity",
                         f"--fixture={fixture}"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


def test_parity_command_on_the_pretraining_fixture(fixture, tmp_path):
  """`parity` recognises the layout, compares the scores and losses, and fails on a fixture
  whose masked-LM bias is 1e-3 off for one token (995, a label of sample 0)."""
  cache = str(tmp_path / "cache")
  result = _parity(str(fixture), cache)
  assert result.returncode == 0, result.stdout + result.stderr
  table = rows(result.stdout)
  assert set(table) == set(PRETRAINING_SCORES) | {f"vt0.{name}" for name in LOSSES}
  assert all(result == "ok" and float(error) <= FLOAT32_BOUND
             for error, result in table.values())
  assert result.stdout.splitlines()[-1].startswith("PASS: 6 arrays compared, 0 over")
  assert "vt0.grad.*" in result.stdout and "220 gradients" in result.stdout

  tampered = tmp_path / "tampered"
  shutil.copytree(fixture, tampered)
  state = dict(np.load(fixture / "pretrain_state_dict.npz"))
  state["cls.predictions.bias"] = state["cls.predictions.bias"].copy()
  state["cls.predictions.bias"][995] += 1e-3
  np.savez(tampered / "pretrain_state_dict.npz", **state)
  result = _parity(str(tampered), cache)
  assert result.returncode == 1, result.stdout + result.stderr
  failed = {key for key, (_, result) in rows(result.stdout).items() if result == "FAIL"}
  assert failed == {"prediction_scores_t", "vt0.masked_lm_loss"}
