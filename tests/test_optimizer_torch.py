"""The optax optimizer against the official PyTorch optimizers (`benchmarks/official_torch.py`)
over a multi-task sequence: `unused_params="torch1"` is torch 1.x's `zero_grad()`
(`set_to_none=False`), "skip" is torch 2's `set_to_none=True`, and RAdam is `--optim RAdam`.

Both sides run in float64 on the same gradients, so they differ only by rounding: the same
formulas evaluated in another order, a few float64 ulps of each value.
"""

import importlib.util
import pathlib

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from twelve_in_one.interop.names import official_name
from twelve_in_one.train import optimizer as opt

torch = pytest.importorskip("torch")

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
ROUNDING = 64 * np.finfo(np.float64).eps   # a few ulps, accumulated over the steps
# Two "tasks": both reach the body; each its own head (a name with "vil_" runs at head_lr).
SHAPES = {("bert", "encoder", "layer_0", "output", "dense", "kernel"): (6, 5),
          ("bert", "encoder", "layer_0", "output", "dense", "bias"): (5,),
          ("bert", "encoder", "layer_0", "output", "LayerNorm", "scale"): (5,),
          ("vil_prediction", "logit_fc_0", "kernel"): (5, 4),
          ("vil_prediction", "logit_fc_0", "bias"): (4,),
          ("vision_logit", "kernel"): (5, 1), ("vision_logit", "bias"): (1,)}
REACHES = {"vqa": ("bert", "vil_prediction"), "refcoco": ("bert", "vision_logit")}
# (task, lr multiplier) per step: the head of each task idles while the other one steps.
SEQUENCE = [("vqa", 0.0), ("refcoco", 0.3), ("vqa", 0.6), ("refcoco", 1.0), ("refcoco", 0.9),
            ("vqa", 0.8), ("refcoco", 0.7), ("refcoco", 0.6)]


@pytest.fixture(scope="module")
def official_torch():
  spec = importlib.util.spec_from_file_location("official_torch",
                                                BENCHMARKS / "official_torch.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _problem(seed: int = 0):
  """Parameters (our layout) and one gradient per step (zero off the task's reach)."""
  rng = np.random.default_rng(seed)
  params = {path: rng.normal(size=shape) for path, shape in SHAPES.items()}
  grads = []
  for task, _ in SEQUENCE:
    grads.append({path: rng.normal(size=shape) * 10.0 ** rng.integers(-3, 1)
                  if path[0] in REACHES[task] else np.zeros(shape)
                  for path, shape in SHAPES.items()})
  return params, grads


def _ours(config, params, grads, reaches=REACHES):
  """Our parameters after each step, by official name (float64)."""
  with jax.enable_x64(True):
    tree = traverse_util.unflatten_dict(params)
    state = opt.build(config, tree).init(tree)
    out = []
    for (task, multiplier), grad in zip(SEQUENCE, grads):
      reached = traverse_util.unflatten_dict({p: p[0] in reaches[task] for p in SHAPES})
      optimizer = opt.build(config, tree, reached)
      updates, state = optimizer.update(traverse_util.unflatten_dict(grad), state, tree,
                                        lr_multiplier=np.float64(multiplier))
      tree = optax.apply_updates(tree, updates)
      out.append(_by_official_name(tree))
  return out


def _by_official_name(tree):
  named = {}
  for path, value in traverse_util.flatten_dict(jax.device_get(tree)).items():
    name, transpose = official_name(path)
    named[name] = np.asarray(value).T if transpose else np.asarray(value)
  return named


def _official(optimizer_class, config, params, grads, set_to_none):
  """The official optimizer, one param group per parameter as `train_tasks.py` builds them,
  its group lrs set by the scheduler's multiplier, gradients set as backward leaves them."""
  named = _by_official_name(traverse_util.unflatten_dict(params))
  tensors = {name: torch.nn.Parameter(torch.from_numpy(value.copy()))
             for name, value in named.items()}
  groups = [{"params": [p], "lr": config.head_lr if "vil_" in name else config.base_lr,
             "weight_decay": 0.0 if any(s in name for s in opt.NO_DECAY_SUBSTRINGS)
             else config.weight_decay, "name": name} for name, p in tensors.items()]
  optimizer = optimizer_class(groups)
  base = {group["name"]: group["lr"] for group in optimizer.param_groups}
  out = []
  for (_, multiplier), grad in zip(SEQUENCE, grads):
    official_grad = _by_official_name(traverse_util.unflatten_dict(grad))
    for name, p in tensors.items():
      if official_grad[name].any():   # in the task's graph: backward adds its gradient
        g = torch.from_numpy(official_grad[name].copy())
        p.grad = g if p.grad is None else p.grad + g
    for group in optimizer.param_groups:
      group["lr"] = base[group["name"]] * multiplier
    optimizer.step()
    for p in tensors.values():           # model.zero_grad(set_to_none=...)
      if set_to_none:
        p.grad = None
      elif p.grad is not None:
        p.grad.zero_()
    out.append({name: p.detach().numpy().copy() for name, p in tensors.items()})
  return out


@pytest.mark.parametrize("mode,set_to_none", [("torch1", False), ("skip", True)])
def test_adamw_modes_match_torch_zero_grad(official_torch, mode, set_to_none):
  config = opt.OptimizerConfig(unused_params=mode)
  params, grads = _problem()
  ours = _ours(config, params, grads)
  official = _official(official_torch.OfficialAdamW, config, params, grads, set_to_none)
  for step, (got, want) in enumerate(zip(ours, official)):
    for name in want:
      np.testing.assert_allclose(got[name], want[name], rtol=ROUNDING, atol=ROUNDING,
                                 err_msg=f"step {step} {name}")


def test_the_modes_differ_on_an_idle_head(official_torch):
  """torch1 keeps moving (and decaying) a head while the other task steps; skip freezes it."""
  params, grads = _problem()
  final = {mode: _ours(opt.OptimizerConfig(unused_params=mode), params, grads)
           for mode in ("torch1", "skip")}
  # Steps 3 and 4 are refcoco's: the VQA head idles.
  for mode, moved in (("torch1", True), ("skip", False)):
    before, after = final[mode][2], final[mode][4]
    assert (np.abs(after["vil_prediction.logit_fc.0.weight"]
                   - before["vil_prediction.logit_fc.0.weight"]).max() > 1e-6) == moved, mode


def test_radam_matches_the_official_radam(official_torch):
  """One task reaching everything (the official counts steps per parameter, optax per
  optimizer: the same count here). The first 5 steps are momentum SGD (the variance is
  intractable, N_sma < 5) and match to rounding; from then on optax adds eps to
  sqrt(v / (1 - b2^t)) where the official adds it to sqrt(v): relative to the step, at most
  eps * (1 / sqrt(1 - b2^t) - 1) / sqrt(v), with sqrt(v) >= sqrt(1 - b2^t) * min |g|."""
  config = opt.OptimizerConfig(name="radam")
  params, _ = _problem()
  rng = np.random.default_rng(1)
  # Gradients of at least 0.1 in magnitude (for the bound below), on every parameter.
  grads = [{path: rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 1.0, size=shape)
            for path, shape in SHAPES.items()} for _ in SEQUENCE]
  everything = {task: ("bert", "vil_prediction", "vision_logit") for task in REACHES}
  ours = _ours(config, params, grads, everything)
  official = _official(official_torch.OfficialRAdam, config, params, grads, True)
  start = _by_official_name(traverse_util.unflatten_dict(params))
  previous_ours, previous_official = start, start
  for step, (got, want) in enumerate(zip(ours, official)):
    t = step + 1
    shrink = np.sqrt(1 - config.b2 ** t)
    eps_effect = opt.RADAM_EPS * (1 / shrink - 1) / (shrink * 0.1) if t > 5 else 0.0
    for name in want:
      update_ours = got[name] - previous_ours[name]
      update_official = want[name] - previous_official[name]
      # The updates also decay the (rounding-close) old parameters alike.
      bound = eps_effect * np.abs(update_official) + ROUNDING * (np.abs(want[name]) + 1)
      assert np.all(np.abs(update_ours - update_official) <= bound), (step, name)
    previous_ours, previous_official = got, want
