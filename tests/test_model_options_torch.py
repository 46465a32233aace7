"""`dynamic_attention` and `fusion_method="sum"` against the official model's computation
(`benchmarks/official_torch.py`, which matches the fixture made by the official code for the
released options: tests/test_official_torch.py).

Both models run the same official-layout weights on the fixture's inputs, each in float32 and
in float64. Two computations of one function differ by their rounding: in float64 by about
2^-29 of what they differ by in float32. So the float64 outputs must agree within
`SEPARATION` (2^-20) of the two float32 rounding errors (each measured against its own float64
run): room for rounding that does not scale exactly, and still six orders of magnitude below
any difference in the function itself: the same weights without the option differ by more
than float32 rounding.
"""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest

from twelve_in_one.interop.official import export_official, official_init
from twelve_in_one.models import ViLBertForVLTasks
from twelve_in_one.models.config import ViLBertConfig
from twelve_in_one.models.vilbert import PRETRAINING_OUTPUTS, TASK_OUTPUTS

torch = pytest.importorskip("torch")

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
SEPARATION = 2.0 ** -20
OUTPUTS = tuple(name for name in TASK_OUTPUTS + PRETRAINING_OUTPUTS
                if name != "bi_seq_relationship")   # the odd-batch head; B is 4 here


@pytest.fixture(scope="module")
def official_torch():
  spec = importlib.util.spec_from_file_location("official_torch",
                                                BENCHMARKS / "official_torch.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _weights(config: ViLBertConfig) -> dict:
  """Official init, every value then moved at random: zero biases and unit LayerNorms would
  hide a missing bias or scale."""
  rng = np.random.default_rng(3)
  params = official_init(config, 5)
  return jax.tree.map(lambda p: (p + 0.05 * rng.standard_normal(p.shape)).astype(np.float32),
                      params)


def _ours(config, params, inputs, dtype) -> dict:
  with jax.enable_x64(dtype == np.float64):
    model = ViLBertForVLTasks(config.replace(dtype=np.dtype(dtype).name))
    cast = lambda x: np.asarray(x, dtype) if np.asarray(x).dtype.kind == "f" else x
    out = jax.jit(lambda p: model.apply(
        {"params": p}, inputs["input_ids"], cast(inputs["image_feat"]),
        cast(inputs["image_loc"]), inputs["token_type_ids"], inputs["attention_mask"],
        inputs["image_mask"], task_ids=inputs["task_ids.task1"], outputs=OUTPUTS))(
            jax.tree.map(cast, params))
    return {name: np.asarray(value, np.float64) for name, value in out.items()}


def _official(official_torch, values, state, inputs, dtype) -> dict:
  model = official_torch.OfficialViLBert(values)
  official_torch.load_official_state_dict(model, state)
  model = model.to(torch.float64 if dtype == np.float64 else torch.float32).eval()
  t = lambda name: torch.from_numpy(np.asarray(inputs[name]))
  f = lambda name: t(name).to(torch.float64 if dtype == np.float64 else torch.float32)
  with torch.no_grad():
    out = model(t("input_ids"), f("image_feat"), f("image_loc"), t("token_type_ids"),
                t("attention_mask"), t("image_mask"), t("task_ids.task1"))
  return {name: out[name].numpy().astype(np.float64) for name in OUTPUTS}


@pytest.mark.parametrize("option", [{"dynamic_attention": True}, {"fusion_method": "sum"}])
def test_option_matches_the_official_model(official_torch, fixture_dir, option):
  values = json.loads((fixture_dir / "tiny_config.json").read_text())
  values.update(option)
  config = ViLBertConfig.from_official_dict(values)
  params = _weights(config)
  state = export_official(params, config)
  inputs = dict(np.load(fixture_dir / "inputs.npz"))
  ours = {dtype: _ours(config, params, inputs, dtype) for dtype in (np.float32, np.float64)}
  official = {dtype: _official(official_torch, values, state, inputs, dtype)
              for dtype in (np.float32, np.float64)}
  # The option changes the function: the same weights without it give other outputs.
  plain = {k: v for k, v in values.items() if k not in option}
  without = _official(official_torch, plain,
                      {k: v for k, v in state.items() if "dyLinear" not in k}, inputs,
                      np.float64)
  real = inputs["image_mask"].astype(bool)
  for name in OUTPUTS:
    # The padded regions' vision_logit carries -10000, which would set its rounding scale.
    pick = (lambda x: x[real]) if name == "vision_logit" else (lambda x: x)
    o32, o64, t32, t64 = (pick(run[dtype][name]) for run in (ours, official)
                          for dtype in (np.float32, np.float64))
    noise = np.abs(o32 - o64).max() + np.abs(t32 - t64).max()
    gap = np.abs(o64 - t64).max()
    assert gap <= SEPARATION * noise, (name, gap, noise)
    if name.startswith("vil_") or "dynamic_attention" in option:   # fusion: pooled heads only
      assert np.abs(pick(without[name]) - t64).max() > noise, name
