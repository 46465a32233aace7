"""The multi-task loop against the official loop run on the fixture (`loop.npz`,
`loop_trace.json`): three tasks over 8 epochs through DSG stops and the resets after epochs 5
and 7, in both `zero_grad` modes, with a checkpoint and restart part-way.

What runs is ours: `Schedule.run_iteration` (the loop body), `LearningRateSchedule`, the jitted
per-task steps (`make_train_step`) with the optax optimizer, and the orbax checkpointer. What
the fixture fixed for determinism is fixed here too: no dropout (eval mode), each task's one
batch at every iteration, and each evaluation's score taken from the fixture's table.
"""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from fixture_utils import fixture_batch, fixture_model, official_params
from twelve_in_one.interop.names import official_name
from twelve_in_one.tasks import task_by_id
from twelve_in_one.train import optimizer as opt
from twelve_in_one.train.checkpoint import Checkpointer
from twelve_in_one.train.dsg import DSGConfig
from twelve_in_one.train.lr_schedule import LearningRateSchedule
from twelve_in_one.train.schedule import Schedule
from twelve_in_one.train.steps import StepSettings, TrainState, create_state, make_train_step

RESUME_AFTER = 14     # save after this many iterations, then continue from the checkpoint
EPSILON_RATIO = np.finfo(np.float64).eps / np.finfo(np.float32).eps


@pytest.fixture(scope="module")
def trace(fixture_dir):
  return json.loads((fixture_dir / "loop_trace.json").read_text())


def _setup(fixture_dir, trace, dtype):
  """(model, parameters, tasks, batches) of the fixture's run, computing in `dtype`."""
  settings = trace["settings"]
  model = fixture_model(fixture_dir, dtype=np.dtype(dtype).name)
  params = official_params(model, dict(np.load(fixture_dir / "tiny_state_dict.npz")), dtype)
  train = dict(np.load(fixture_dir / "train.npz"))
  tasks = {key: task_by_id(int(key[len("TASK"):])) for key in settings["tasks"]}
  batches = {}
  for key in settings["tasks"]:
    batch = fixture_batch(fixture_dir, train, settings["fixture_batch_names"][key])
    batches[key] = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in batch.items()}
  return model, params, tasks, batches


def _schedules(settings, tasks):
  names = {key: task.name for key, task in tasks.items()}
  dsg = settings["dsg"]
  schedule = Schedule(
      task_names=[names[key] for key in settings["tasks"]],
      task_epoch_iterations={names[k]: v for k, v in settings["task_num_iters"].items()},
      iterations_per_epoch=settings["median_num_iter"], num_epochs=settings["num_epochs"],
      dsg=DSGConfig(threshold=dsg["threshold"], continue_threshold=dsg["continue_threshold"],
                    patience=dsg["patience"], cooldown=dsg["cooldown"],
                    train_iter_gap=settings["train_iter_gap"],
                    reset_epochs=tuple(settings["lr_reduce_list"])))
  total = schedule.total_iterations
  lr = LearningRateSchedule("warmup_linear", settings["warmup_proportion"] * total, total,
                            reduce_epochs=tuple(settings["lr_reduce_list"]))
  return schedule, lr


def _run(mode, trace, setup, checkpoint_dir=None):
  """Our loop over the fixture's run: (steps, evaluations, final parameters by official name).

  With `checkpoint_dir`, the run is saved after RESUME_AFTER iterations and continued from the
  checkpoint alone (fresh schedule objects, state restored by orbax).
  """
  model, params, tasks, batches = setup
  settings = trace["settings"]
  dtype = jax.tree.leaves(params)[0].dtype.type
  config = opt.OptimizerConfig(unused_params=mode)
  by_name = {task.name: key for key, task in tasks.items()}
  steps = {key: jax.jit(make_train_step(
      model.apply, task, StepSettings(config, loss_scale=settings["loss_scale"][key],
                                      deterministic=True)),
      donate_argnums=(0,)) for key, task in tasks.items()}
  # Committed to one device, as the restored state is: otherwise the steps would compile
  # again for the restored arrays' sharding.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  live = {"state": jax.device_put(create_state(params, config), device), "iteration": 0}
  rng = jax.random.key(0)
  scores = {key: list(values) for key, values in trace["scores"].items()}
  steps_taken, evaluations = [], []

  def train(names, multiplier):
    key = by_name[names[0]]
    live["state"], _ = steps[key](live["state"], batches[key], rng, dtype(multiplier))
    steps_taken.append((live["iteration"], key, multiplier))

  def evaluate(name):
    return scores[by_name[name]].pop(0)

  schedule, lr = _schedules(settings, tasks)
  for iteration in range(schedule.total_iterations):
    if checkpoint_dir is not None and iteration == RESUME_AFTER:
      checkpointer = Checkpointer(str(checkpoint_dir), asynchronous=False)
      checkpointer.save(iteration, live["state"], {"schedule": schedule.to_json(),
                                                   "lr_schedule": lr.to_json()})
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                              live["state"])
      live["state"] = None
      _, restored, host = checkpointer.restore_latest(abstract)
      checkpointer.close()
      live["state"] = TrainState(**restored)
      schedule, lr = _schedules(settings, tasks)
      schedule.load_json(host["schedule"])
      lr.load_json(host["lr_schedule"])
    live["iteration"] = iteration
    report = schedule.run_iteration(iteration, lr, train, evaluate)
    for name, score, controller in report.evaluations:
      evaluations.append(dict(iteration=iteration, task=by_name[name], score=score,
                              **{k: controller[k] for k in ("in_stop", "best",
                                                            "num_bad_epochs",
                                                            "cooldown_counter")}))
  final = {}
  for path, value in traverse_util.flatten_dict(jax.device_get(live["state"].params)).items():
    name, transpose = official_name(path)
    final[name] = np.asarray(value).T if transpose else np.asarray(value)
  return steps_taken, evaluations, final


@pytest.mark.parametrize("mode", ["torch1", "skip"])
def test_loop_matches_the_official_loop(mode, fixture_dir, trace, tmp_path):
  steps, evaluations, params = _run(mode, trace, _setup(fixture_dir, trace, np.float32),
                                    tmp_path)
  expected = trace[mode]

  # The learning-rate multiplier of every forwarded step, in order (and no other step).
  official = [(s["iteration"], s["task"], s["multiplier"]) for s in expected["steps"]
              if s["forwarded"]]
  assert any(not s["forwarded"] for s in expected["steps"])   # DSG did stop tasks
  assert [(i, t) for i, t, _ in steps] == [(i, t) for i, t, _ in official]
  np.testing.assert_allclose([m for *_, m in steps], [m for *_, m in official], rtol=1e-12,
                             atol=1e-15)

  # Every evaluation: when, which task, and the controller right after it.
  keys = ("iteration", "task", "score", "in_stop", "best", "num_bad_epochs",
          "cooldown_counter")
  assert evaluations == [{k: e[k] for k in keys} for e in expected["evaluations"]]

  # The parameters after the run. The official float32 run is within `max_abs_err` of a
  # float64 run of the same loop (the fixture's record); ours is within what we measure
  # against our own float64 run; and the two float64 runs differ by their own rounding noise,
  # the float32 noises scaled by the ratio of the machine epsilons. So each element may
  # differ by the sum (triangle inequality).
  with jax.enable_x64(True):
    _, _, exact = _run(mode, trace, _setup(fixture_dir, trace, np.float64))
  noise = expected["fp32_vs_fp64_final_params"]
  stored = np.load(fixture_dir / "loop.npz")
  initial = np.load(fixture_dir / "tiny_state_dict.npz")
  assert set(params) <= set(noise)
  tight = 0
  for name, ours in params.items():
    reference = stored[f"{mode}.param.{name}"]
    ours = ours.astype(np.float64)     # float32 differences, exact in float64
    error = np.abs(ours - reference)
    ours_noise, official_noise = np.abs(ours - exact[name]), noise[name]["max_abs_err"]
    bound = (ours_noise + official_noise
             + EPSILON_RATIO * (ours_noise.max() + official_noise))
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert np.all(error <= bound), (name, worst, error[worst], bound[worst])
    tight += bool(bound.max() < 0.01 * np.abs(reference - initial[name]).max())
  # Not a vacuous check: for most parameters the bound is far below what the run moved them.
  assert tight > 0.8 * len(params), (tight, len(params))
