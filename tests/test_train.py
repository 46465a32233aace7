"""The trainer: end-to-end tiny runs, sharding equivalence, exact resume, NaN stop, errors."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from run_configs import REPO, config_module, flat_params, tiny_config_dict
from twelve_in_one.models import ViLBertForVLTasks, init_params, tiny_config
from twelve_in_one.tasks import get_task
from twelve_in_one.tasks.examples import random_batch
from twelve_in_one.train import loop as loop_lib
from twelve_in_one.train import optimizer as opt
from twelve_in_one.train import sharding
from twelve_in_one.train.schedule import Schedule
from twelve_in_one.train.steps import (StepSettings, _accumulated_grads, create_state,
                                       make_train_step)

# ------------------------------------------------------------------ one sharded step


def _one_step(mesh_sizes, rules, devices=None, grad_accum_steps=1, **model_changes):
  model = ViLBertForVLTasks(tiny_config(**{"bi_hidden_size": 24, **model_changes}))
  params = init_params(model, jax.random.key(0))
  task = get_task("vqa")
  batch = random_batch(task, 8, vocab_size=1000, seq_len=6, num_regions=5)
  config = opt.OptimizerConfig()
  step = make_train_step(model.apply, task,
                         StepSettings(config, 2.0, grad_accum_steps, tuple(rules)))
  mesh = sharding.make_mesh(mesh_sizes, devices)
  import flax.linen as nn
  boxed = jax.eval_shape(lambda: loop_lib.init_variables(model, jax.random.key(0)))
  shardings = sharding.tree_shardings(params, nn.get_partition_spec(boxed)["params"], mesh,
                                      rules)
  opt_state = opt.init_state(params, config)
  state = jax.device_put(create_state(params, config), loop_lib.TrainState(
      step=sharding.replicated(mesh), params=shardings,
      opt_state=opt.state_shardings(opt_state, params, shardings, sharding.replicated(mesh))))
  with jax.set_mesh(mesh):
    new_state, metrics = jax.jit(step)(state, sharding.global_batch(batch, mesh),
                                       jax.random.key(3), np.float32(1.0))
  return flat_params(new_state.params), float(metrics["loss"])


# dp_tp is checked against fsdp by test_checkpoint_from_one_mesh_resumes_on_another.
@pytest.mark.parametrize("preset", ["fsdp"])
def test_sharded_step_equals_single_device(preset):
  mesh_presets = config_module()._mesh_preset
  single, single_loss = _one_step({"data": 1, "fsdp": 1, "tensor": 1}, [],
                                  devices=jax.devices()[:1])
  sizes, rules = mesh_presets(preset)
  sharded, sharded_loss = _one_step(sizes, rules)
  assert abs(single_loss - sharded_loss) <= 1e-5 * abs(single_loss)
  for name, value in single.items():
    np.testing.assert_allclose(sharded[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


# ------------------------------------------------------------------ gradient accumulation


def test_accumulation_averages_micro_batches_each_with_its_own_key():
  """4 micro-batches give the full batch's mean loss and gradient, and micro-batch i draws
  from fold_in(rng, i) (one shared key would repeat example j's dropout masks)."""
  rng = jax.random.key(7)
  batch = {"x": np.arange(24, dtype=np.float32).reshape(8, 3) / 10.0}
  params = {"w": jnp.array([0.5, -1.0, 2.0])}

  def loss_fn(p, b, key):
    noise = jax.random.uniform(key, b["x"].shape)   # stands in for dropout
    loss = jnp.mean((b["x"] * noise) @ p["w"] ** 2)
    return loss, {"loss": loss, "scores": jnp.zeros(b["x"].shape[0])}

  (loss, _), grads = _accumulated_grads(loss_fn, params, batch, rng, 4)
  micro = [loss_fn(params, {"x": batch["x"][2 * i:2 * i + 2]}, jax.random.fold_in(rng, i))[0]
           for i in range(4)]
  np.testing.assert_allclose(float(loss), float(np.mean(micro)), rtol=1e-6)
  full = lambda p: sum(loss_fn(p, {"x": batch["x"][2 * i:2 * i + 2]},
                               jax.random.fold_in(rng, i))[0] for i in range(4)) / 4
  np.testing.assert_allclose(grads["w"], jax.grad(full)(params)["w"], rtol=1e-6)
  shared = lambda p: sum(loss_fn(p, {"x": batch["x"][2 * i:2 * i + 2]}, rng)[0]
                         for i in range(4)) / 4
  assert abs(float(loss) - float(shared(params))) > 1e-3


def test_sharded_remat_with_accumulation_matches_the_plain_step():
  """Remat, on the fsdp mesh, inside the accumulation scan: the single-device plain step's
  loss, and its update to rounding."""
  # A shallower tiny model (one text, visual and co-attention layer each, and a pooled-only
  # last text layer) keeps the two scanned compilations short.
  shallow = dict(num_hidden_layers=2, v_num_hidden_layers=1, v_biattention_id=(1,),
                 t_biattention_id=(1,))
  plain, plain_loss = _one_step({"data": 1, "fsdp": 1, "tensor": 1}, [],
                                devices=jax.devices()[:1], grad_accum_steps=4, **shallow)
  sizes, rules = config_module()._mesh_preset("fsdp")
  remat, remat_loss = _one_step(sizes, rules, grad_accum_steps=4, remat=True, **shallow)
  assert abs(plain_loss - remat_loss) <= 1e-5 * abs(plain_loss)
  for name, value in plain.items():
    np.testing.assert_allclose(remat[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


# ------------------------------------------------------------------ runs


def test_tiny_run_trains_evaluates_and_never_recompiles(tmp_path):
  result = loop_lib.train_and_evaluate(tiny_config_dict(), str(tmp_path))
  assert result.iterations == 2
  assert set(result.results) == {"vqa", "refcoco", "nlvr2"}
  assert all(count == 1 for count in result.compilations.values()), result.compilations
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r.get("kind") == "train"]
  assert {r["task"] for r in train} == {"vqa", "refcoco", "nlvr2"}
  assert all(np.isfinite(r["loss"]) and "examples_per_sec" in r and "lr" in r for r in train)
  assert (tmp_path / "results.md").read_text().count("|") > 10
  assert json.loads((tmp_path / "results.json").read_text())["vqa"]["metric"] == "soft accuracy"
  assert list((tmp_path / "tensorboard").iterdir())


def test_nan_loss_stops_within_one_step_and_keeps_last_checkpoint(tmp_path, monkeypatch):
  config = tiny_config_dict(tasks="vqa,refcoco", **{"schedule.num_epochs": 3,
                                                    "checkpoint.every_iterations": 1})
  original = loop_lib.device_batch
  calls = {"n": 0}

  def poisoned(batch, mesh):
    if "example_mask" not in batch:   # training batches only (validation ones carry a mask)
      calls["n"] += 1
      if calls["n"] == 4:   # iteration 1, second task (refcoco)
        batch = dict(batch, image_feat=np.full_like(batch["image_feat"], np.nan))
    return original(batch, mesh)

  monkeypatch.setattr(loop_lib, "device_batch", poisoned)
  with pytest.raises(FloatingPointError, match="task refcoco: loss is nan at iteration 1"):
    loop_lib.train_and_evaluate(config, str(tmp_path))
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [1]


def test_config_errors_are_clear(tmp_path):
  with pytest.raises(ValueError, match="unknown task 'vqa2'"):
    loop_lib.train_and_evaluate(tiny_config_dict(tasks="vqa2"), str(tmp_path))
  bad = tiny_config_dict(tasks="vqa")
  bad.task_settings.vqa.batch_size = 6
  with pytest.raises(ValueError, match=r"config.task_settings.vqa.batch_size=6 is not divisible "
                                       r"by the 8 data-parallel devices"):
    loop_lib.train_and_evaluate(bad, str(tmp_path))
  bad = tiny_config_dict(tasks="vqa")
  bad.mesh.axes = {"data": 3, "fsdp": 1, "tensor": 1}
  with pytest.raises(ValueError, match="multiply to 3, but there are 8 devices"):
    loop_lib.train_and_evaluate(bad, str(tmp_path))


def test_model_overrides_from_the_config():
  from twelve_in_one.train.validate import run_model_config
  config = tiny_config_dict(tasks="vqa")
  assert run_model_config(config).hidden_dropout_prob == 0.1      # the preset's
  config.model.dropout = 0.0
  config.model.vocab_size = 30522
  model_config = run_model_config(config)
  assert model_config.vocab_size == 30522
  assert (model_config.hidden_dropout_prob, model_config.attention_probs_dropout_prob,
          model_config.v_hidden_dropout_prob, model_config.v_attention_probs_dropout_prob) == (
              0.0, 0.0, 0.0, 0.0)
  config.model.dropout = 1.5
  with pytest.raises(ValueError, match=r"config.model.dropout=1.5; expected a probability"):
    run_model_config(config)


def test_unknown_config_key_on_the_command_line_is_named(tmp_path):
  import subprocess
  import sys
  run = subprocess.run([sys.executable, "-m", "twelve_in_one.cli", "train",
                        f"--config={REPO}/configs/twelve_in_one.py:tiny",
                        f"--workdir={tmp_path}", "--config.schedule.nope=1"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
  assert run.returncode != 0
  assert "nope" in run.stderr


def test_checkpoint_from_one_mesh_resumes_on_another(tmp_path, monkeypatch):
  fsdp = tiny_config_dict(tasks="vqa", **{"schedule.num_epochs": 4,
                                          "checkpoint.every_iterations": 2})
  dp_tp = tiny_config_dict(tasks="vqa", **{"schedule.num_epochs": 4,
                                           "checkpoint.every_iterations": 2})
  dp_tp.mesh.axes, dp_tp.mesh.rules = config_module()._mesh_preset("dp_tp")
  expected = flat_params(loop_lib.train_and_evaluate(fsdp, str(tmp_path / "straight")).state.params)
  original = Schedule.tasks_at

  def tasks_at(self, iteration):
    if iteration == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, iteration)

  monkeypatch.setattr(Schedule, "tasks_at", tasks_at)
  assert loop_lib.train_and_evaluate(fsdp, str(tmp_path / "moved")).preempted
  monkeypatch.setattr(Schedule, "tasks_at", original)
  resumed = loop_lib.train_and_evaluate(dp_tp, str(tmp_path / "moved"))
  leaf = resumed.state.params["bert"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
  assert "tensor" in str(leaf.sharding.spec)   # really restored onto the dp+tp layout
  got = flat_params(resumed.state.params)
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("kind", ["weighted", "summed"])
def test_alternative_schedules_run(tmp_path, kind):
  # The tasks of the other tiny runs: the weighted run's per-task steps are theirs.
  config = tiny_config_dict(tasks="vqa,refcoco", **{"schedule.kind": kind,
                                                    "schedule.num_epochs": 3})
  result = loop_lib.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  steps = [(r["iteration"], r["task"]) for r in records if r.get("kind") == "train"]
  if kind == "weighted":   # one task per iteration
    assert len(steps) == 3
  else:                    # every task in every (summed) update
    assert len(steps) == 6
  assert set(result.results) == {"vqa", "refcoco"}
