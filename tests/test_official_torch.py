"""The PyTorch re-expression of the official step (`benchmarks/official_torch.py`) against the
fixture made by running the official code: if it matches, timing it is timing the official
computation (`benchmarks/train_step.py --official`)."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
from fixture_utils import fixture_batch

torch = pytest.importorskip("torch")

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def official_torch():
  spec = importlib.util.spec_from_file_location("official_torch",
                                                BENCHMARKS / "official_torch.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def loaded(official_torch, fixture_dir):
  """A fresh model with the fixture's state dict (float32, eval mode, as the fixture ran)."""
  def make():
    config = json.loads((fixture_dir / "tiny_config.json").read_text())
    torch.manual_seed(0)
    model = official_torch.OfficialViLBert(config)
    state = np.load(fixture_dir / "tiny_state_dict.npz")
    official_torch.load_official_state_dict(model, {k: state[k] for k in state.files})
    return model.eval()
  return make


def _scaled_error(ours: np.ndarray, ref: np.ndarray) -> float:
  return float(np.max(np.abs(ours - ref)) / max(1.0, np.max(np.abs(ref))))


def test_forward_matches_every_official_output(loaded, fixture_dir):
  model = loaded()
  inputs = np.load(fixture_dir / "inputs.npz")
  ref = np.load(fixture_dir / "outputs.npz")
  manifest = json.loads((fixture_dir / "manifest.json").read_text())
  t = lambda name, rows: torch.from_numpy(inputs[name][rows])
  compared = 0
  for run, spec in manifest["runs"].items():
    rows = np.asarray(spec["samples"])
    with torch.no_grad():
      out = model(t("input_ids", rows), t("image_feat", rows), t("image_loc", rows),
                  t("token_type_ids", rows), t("attention_mask", rows), t("image_mask", rows),
                  torch.from_numpy(inputs[f"task_ids.{run}"]))
    for name in model.OUTPUTS:
      got, want = out[name].numpy(), ref[f"{run}.{name}"]
      assert got.shape == want.shape, (run, name)
      if name == "vision_logit":   # the -10000 on padded regions would set the scale
        real = inputs["image_mask"][rows].astype(bool)
        got, want = got[real], want[real]
      # Within float32 rounding of the official fp32 run (its own fp32-vs-fp64 error reaches
      # 5.8e-6): the same ops in the same order, though not always the same kernels.
      assert _scaled_error(got, want) < 1e-5, (run, name, _scaled_error(got, want))
      compared += 1
  assert compared == 9 * len(manifest["runs"])


def _task1_batch(official_torch, fixture_dir) -> dict:
  """The fixture's VQA batch as the official dataset yields it."""
  train = np.load(fixture_dir / "train.npz")
  assert (train["task1.task_tokens"] == 1).all()
  return official_torch.official_batch(fixture_batch(fixture_dir, train, "task1"))


def test_vqa_loss_and_every_gradient_match(official_torch, loaded, fixture_dir):
  model = loaded()
  train = np.load(fixture_dir / "train.npz")
  manifest = json.loads((fixture_dir / "train_manifest.json").read_text())
  loss, score = official_torch.vqa_loss(model, _task1_batch(official_torch, fixture_dir))
  np.testing.assert_allclose(loss.item(), float(train["task1.loss"]), rtol=1e-6)
  assert float(score) == pytest.approx(float(train["task1.batch_score"]))
  loss.backward()
  without = set(manifest["grad"]["params_without_grad"])
  checked = 0
  for name, param in model.named_parameters():
    want = train[f"grad.{name}"]
    if param.grad is None:
      assert name in without and not want.any(), name
      continue
    got = param.grad.numpy()
    if ".key.bias" in name or "key1.bias" in name or "key2.bias" in name:
      np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)   # zero up to rounding
    else:
      assert _scaled_error(got, want) < 1e-5 * max(1.0, np.abs(want).max()), name
    checked += 1
  assert checked > 150


def test_adamw_steps_match_the_official_optimizer(official_torch, loaded, fixture_dir):
  model = loaded()
  train = np.load(fixture_dir / "train.npz")
  batch = _task1_batch(official_torch, fixture_dir)
  optimizer = official_torch.OfficialAdamW(official_torch.official_param_groups(model))
  losses, params = [], {}
  for step in (1, 2, 3):
    loss, _ = official_torch.vqa_training_step(model, optimizer, batch, loss_scale=1.0)
    losses.append(loss)
    if step in (1, 3):
      params[step] = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
  np.testing.assert_allclose(losses, train["optim.loss"], rtol=1e-5)
  slices = {"bert.embeddings.word_embeddings.weight": np.s_[0:128],
            "bert.embeddings.position_embeddings.weight": np.s_[0:32],
            "bert.v_embeddings.image_embeddings.weight": np.s_[:, 0:64],
            "vil_prediction.logit_fc.3.weight": np.s_[0:64]}
  # Adam divides by sqrt(v) ~ |g|, so an element whose official gradient is float32 rounding
  # noise (below 1e-5 of its parameter's largest; every key bias, zero in exact arithmetic)
  # moves a full ~3.16 lr step in a noise-chosen direction: those may differ by the steps taken.
  # Every other element must agree to 1e-6.
  lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
  checked = 0
  for step in (1, 3):
    for name, value in params[step].items():
      grad = train[f"grad.{name}"]
      if name in slices:
        want, value, grad = (train[f"step{step}_slice.{name}"], value[slices[name]],
                             grad[slices[name]])
      elif f"step{step}.{name}" in train.files:
        want = train[f"step{step}.{name}"]
      else:
        continue
      noise = (np.abs(grad) < 1e-5 * np.abs(grad).max()) & (grad != 0)
      if ".key.bias" in name or "key1.bias" in name or "key2.bias" in name:
        noise[...] = True
      else:
        assert noise.mean() < 0.05, name   # a handful of elements, not a loophole
      error = np.abs(value - want)
      assert error[~noise].max(initial=0) <= 1e-6, (step, name, error[~noise].max())
      assert error[noise].max(initial=0) <= 2 * 3.2 * lrs[name] * step, (step, name)
      checked += 1
  assert checked == 2 * 214   # 210 stored whole + 4 stored as a slice
