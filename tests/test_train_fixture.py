"""The optimizer, schedule, DSG, losses and gradients against the official training fixture."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from fixture_utils import fixture_batch, fixture_model, official_params
from twelve_in_one.interop.names import official_name
from twelve_in_one.tasks import task_by_id
from twelve_in_one.train import optimizer as opt
from twelve_in_one.train.dsg import DSGConfig, StopAndGo
from twelve_in_one.train.lr_schedule import warmup_linear
from twelve_in_one.train.objective import task_loss


@pytest.fixture(scope="module")
def train(fixture_dir):
  return dict(np.load(fixture_dir / "train.npz"))


@pytest.fixture(scope="module")
def model_and_params(fixture_dir):
  model = fixture_model(fixture_dir)
  state = dict(np.load(fixture_dir / "tiny_state_dict.npz"))
  return model, official_params(model, state)


def _is_key_bias(name: str) -> bool:
  """Attention key biases: softmax ignores a constant shift, so their gradient is exactly 0."""
  return name.endswith((".key.bias", ".key1.bias", ".key2.bias"))


def _vqa_update(model, params, batch, config):
  """The optax update of a VQA step: `(params, grads, state) -> (params, state)`, touching the
  parameters the VQA loss reaches (the body and its head)."""
  task = task_by_id(1)
  reached = opt.reached_by(lambda p: task_loss(model.apply, p, task, batch), params)
  optimizer = opt.build(config, params, reached)

  def update(params, grads, state):
    updates, state = optimizer.update(grads, state, params, lr_multiplier=jnp.float32(1.0))
    return optax.apply_updates(params, updates), state

  return update, optimizer.init


TASK_KEYS = ["task1", "task15", "task13", "task9", "task12", "task7", "task4"]


@pytest.mark.parametrize("key", TASK_KEYS)
def test_losses_and_scores_match_official_from_our_forward(fixture_dir, train, model_and_params,
                                                           key):
  model, params = model_and_params
  task = task_by_id(int(key[4:]))
  batch = fixture_batch(fixture_dir, train, key)
  loss, aux = jax.jit(lambda p: task_loss(model.apply, p, task, batch))(params)
  np.testing.assert_allclose(float(aux["loss"]), float(train[f"{key}.loss"]), rtol=2e-5)
  np.testing.assert_allclose(float(aux["scores"].mean()), float(train[f"{key}.batch_score"]),
                             atol=1e-7)


def test_vqa_gradient_matches_official(fixture_dir, train, model_and_params):
  model, params = model_and_params
  task = task_by_id(1)
  batch = fixture_batch(fixture_dir, train, "task1")
  grads = jax.jit(jax.grad(lambda p: task_loss(model.apply, p, task, batch)[0]))(params)
  manifest = json.loads((fixture_dir / "train_manifest.json").read_text())
  without_grad = set(manifest["grad"]["params_without_grad"])
  for path, g in traverse_util.flatten_dict(grads).items():
    name, transpose = official_name(path)
    ref = train[f"grad.{name}"]
    ours = np.asarray(g).T if transpose else np.asarray(g)
    if name in without_grad:
      assert np.all(ours == 0), name   # not on the loss path: exactly zero
      continue
    scale = max(np.abs(ref).max(), 1e-30)
    if _is_key_bias(name):
      # Mathematically zero (softmax ignores a constant shift); rounding noise only.
      assert np.abs(ours).max() < 1e-5, name
      continue
    assert np.abs(ours - ref).max() / scale < 2e-5, (name, np.abs(ours - ref).max(), scale)


def _compare_step(train, params, ours_tree, index, floor_mask=None):
  """Relative max error of every changed parameter against `step<index>.*` (or its slice)."""
  checked, errors = 0, {}
  flat0 = traverse_util.flatten_dict(params)
  for path, value in traverse_util.flatten_dict(ours_tree).items():
    name, transpose = official_name(path)
    ours = np.asarray(value).T if transpose else np.asarray(value)
    full, sliced = f"step{index}.{name}", f"step{index}_slice.{name}"
    if full in train:
      ref = train[full]
    elif sliced in train:
      ref = train[sliced]
      ours = ours[tuple(slice(0, n) for n in ref.shape)]
    else:   # no gradient in the reference: untouched, not even decayed
      start = np.asarray(flat0[path])
      np.testing.assert_array_equal(ours, start.T if transpose else start, err_msg=name)
      continue
    diff = np.abs(ours - ref)
    if floor_mask is not None and name in floor_mask:
      diff = np.where(floor_mask[name][tuple(slice(0, n) for n in ref.shape)], 0.0, diff)
    errors[name] = diff.max() / max(np.abs(ref).max(), 1e-12)
    checked += 1
  return checked, errors


def test_adamw_update_from_official_gradients_matches_step1(fixture_dir, train,
                                                           model_and_params):
  """The optimizer alone: the fixture's own gradients through our update give `step1.*`."""
  model, params = model_and_params
  config = opt.OptimizerConfig()
  grads = {}
  for path in traverse_util.flatten_dict(params):
    name, transpose = official_name(path)
    grads[path] = train[f"grad.{name}"].T if transpose else train[f"grad.{name}"]
  grads = traverse_util.unflatten_dict(grads)
  update, init = _vqa_update(model, params, fixture_batch(fixture_dir, train, "task1"), config)
  new, _ = jax.jit(lambda p, g: update(p, g, init(p)))(params, grads)
  checked, errors = _compare_step(train, params, new, 1)
  assert checked == 214   # 210 stored whole + 4 stored as a slice
  assert max(errors.values()) <= 1e-6, max(errors.items(), key=lambda kv: kv[1])


def test_adamw_steps_through_our_backward_match_official(fixture_dir, train, model_and_params):
  """Steps 1 and 3 with our own forward/backward, as the reference's loop runs them.

  Adam divides by sqrt(v) ~ |g|, so a gradient element that is pure float32 rounding noise in
  the reference (the fixture measures its float32 gradients at up to 3.2e-6 x max|g| from
  float64) still moves its parameter by a full ~3.16 lr step in a noise-chosen direction. Those
  elements (|g| below 1e-5 x max|g| of their parameter in step 1) are checked against the step
  size instead; every other element must agree to 1e-6 relative.
  """
  model, params = model_and_params
  task = task_by_id(1)
  batch = fixture_batch(fixture_dir, train, "task1")
  config = opt.OptimizerConfig()
  update, init = _vqa_update(model, params, batch, config)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: task_loss(model.apply, p, task, batch)[0])(params)
    return update(params, grads, state)

  noise_floor, noisy, total = {}, 0, 0
  for key, g in train.items():
    if key.startswith("grad.") and key != "grad.loss":
      name = key[len("grad."):]
      mask = np.abs(g) < 1e-5 * max(np.abs(g).max(), 1e-30)
      mask &= g != 0           # exactly-zero rows (unused embeddings) must match exactly
      if _is_key_bias(name):   # gradient exactly zero in exact arithmetic: all noise
        mask = np.ones_like(mask)
      noise_floor[name] = mask
      noisy += int(noise_floor[key[len("grad."):]].sum())
      total += g.size
  assert noisy / total < 0.01   # a handful of elements, not a loophole

  state, current = init(params), params
  snapshots = {}
  for index in range(1, 4):
    current, state = step(current, state)
    snapshots[index] = current
  for index in (1, 3):
    checked, errors = _compare_step(train, params, snapshots[index], index, noise_floor)
    assert checked == 214   # 210 stored whole + 4 stored as a slice
    worst = max(errors.items(), key=lambda kv: kv[1])
    assert worst[1] <= 1e-6, (index, worst)
    # The noise-floor elements still moved by at most the size of the Adam steps taken.
    for path, value in traverse_util.flatten_dict(snapshots[index]).items():
      name, transpose = official_name(path)
      if f"step{index}.{name}" in train and name in noise_floor:
        ours = np.asarray(value).T if transpose else np.asarray(value)
        ref = train[f"step{index}.{name}"]
        lr = config.head_lr if "vil_" in name else config.base_lr
        assert np.abs(ours - ref)[noise_floor[name]].max(initial=0) <= 2 * 3.2 * lr * index


def test_warmup_linear_multipliers_match_exactly(fixture_dir, train):
  manifest = json.loads((fixture_dir / "train_manifest.json").read_text())
  sched = manifest["schedule"]
  expected = np.asarray(sched["multiplier_fp64"], np.float64)
  ours = [warmup_linear(s, sched["warmup_steps"], sched["t_total"])
          for s in range(len(expected))]
  assert ours == expected.tolist()
  np.testing.assert_array_equal(train["schedule.warmup_linear"], np.float32(ours))


def test_dsg_trace_matches_state_by_state(fixture_dir):
  trace = json.loads((fixture_dir / "dsg_trace.json").read_text())
  args = trace["args"]
  config = DSGConfig(threshold=args["threshold"], continue_threshold=args["continue_threshold"],
                     patience=args["patience"], cooldown=args["cooldown"],
                     reset_epochs=tuple(trace["reset_after_epochs"]))
  controller = StopAndGo.from_json(trace["initial_state"])
  for entry in trace["trace"]:
    controller.step(entry["score"], config)
    expected = {k: entry[k] for k in ("in_stop", "best", "num_bad_epochs", "cooldown_counter",
                                      "last_epoch")}
    assert controller.to_json() == expected, entry["epoch"]
    if entry["epoch"] in config.reset_epochs:
      controller.reset()
      assert controller.to_json() == entry["after_reset"]
