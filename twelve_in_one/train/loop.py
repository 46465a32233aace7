"""The multi-task training loop: `train_and_evaluate(config, workdir)`.

Read top to bottom, section by section:

  Set up          distributed runtime, mesh, tasks, model
  Input           one resumable grain iterator per task
  State           parameters and optimizer state born sharded, or restored from the workdir
  Steps           one jit-compiled step per task (the optax optimizer, `optimizer.py`)
  Loop            round-robin (or weighted / summed) with Dynamic Stop-and-Go: the official
                  loop body (`Schedule.run_iteration`) with its learning-rate schedulers
                  (`lr_schedule.py`)
  Evaluate        each task after the iterations its loader length divides, as the official
                  loop does (`evaluation.py`)
  Checkpoint      asynchronously every N iterations, at once on SIGTERM

Only process 0 writes logs, event files, metrics.jsonl and the result tables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from twelve_in_one import hostmem, paths
from twelve_in_one.models import ViLBertForVLTasks
from twelve_in_one.models.vilbert import init_variables
from twelve_in_one.tasks.registry import Task, loss_scale
from twelve_in_one.train import optimizer as opt
from twelve_in_one.train import distributed, options, prng, sharding, workdir_lock
from twelve_in_one.train.checkpoint import Checkpointer, abstract_like
from twelve_in_one.train.dsg import DSGConfig
from twelve_in_one.train.evaluation import batch_shapes, device_batch, evaluate_task
from twelve_in_one.train.inputs import TaskData, synthetic_task_data, tfds_task_data
from twelve_in_one.train.metrics_log import MetricsLog, results_table
from twelve_in_one.train.schedule import Schedule, iterations_per_epoch, loader_length
from twelve_in_one.train.steps import (StepCache, StepSettings, TrainState, initial_state,
                                       make_eval_step, make_summed_step, make_train_step)
from twelve_in_one.train.validate import resolve_tasks, run_model_config, validate_config


# The commands' exit status after a preemption: 128 + SIGTERM, as for a process SIGTERM
# ended, so a restart-on-failure supervisor reruns the command (0 would read as "done").
PREEMPTED_EXIT_STATUS = 128 + int(signal.SIGTERM)


class Preempted(Exception):
  """Raised after the SIGTERM checkpoint is written, so the caller can exit cleanly."""


@dataclasses.dataclass
class RunResult:
  iterations: int
  results: dict[str, dict]
  state: Any
  compilations: dict[str, int]
  preempted: bool = False


def build_task_data(config, tasks: list[Task], model_config) -> dict[str, TaskData]:
  processes, index = jax.process_count(), jax.process_index()
  data = {}
  for task in tasks:
    per_process = task.batch_size // processes
    if config.data.source == "synthetic":
      data[task.name] = synthetic_task_data(
          task, batch_size_per_process=per_process, seed=config.seed, process_index=index,
          process_count=processes, num_train_examples=config.data.synthetic_train_examples,
          num_eval_examples=config.data.synthetic_eval_examples,
          vocab_size=model_config.vocab_size, feature_size=model_config.v_feature_size,
          seq_len=config.data.synthetic_seq_len or None,
          num_regions=config.data.synthetic_num_regions or None)
    elif config.data.source == "tfds":
      data[task.name] = tfds_task_data(
          task, data_dir=config.data.data_dir, batch_size_per_process=per_process,
          seed=config.seed, process_index=index, process_count=processes,
          num_workers=config.data.num_workers)
    else:
      raise ValueError(f"config.data.source={config.data.source!r}; expected tfds or "
                       "synthetic")
  return data


def answer_head_sizes(data: dict[str, TaskData]) -> dict[str, int]:
  """The answer heads' sizes the data fixes: its answer vocabularies (3129 / 1533 in the release).

  VQA and VG-QA share `vil_prediction` (VG-QA answers live in the VQA label space), so their
  vocabularies must agree.
  """
  sizes: dict[str, tuple[int, str]] = {}
  for name, task_data in data.items():
    key = task_data.task.head_spec.answer_head   # the model-config field of its answer head
    if not key or task_data.num_classes is None:
      continue
    if key in sizes and sizes[key][0] != task_data.num_classes:
      raise ValueError(f"tasks {sizes[key][1]} and {name} share the answer head but their "
                       f"prepared answer vocabularies have {sizes[key][0]} and "
                       f"{task_data.num_classes} answers")
    sizes[key] = (task_data.num_classes, name)
  return {key: size for key, (size, _) in sizes.items()}


def train_and_evaluate(config, workdir: str, chance: dict[str, float] | None = None
                       ) -> RunResult:
  """Runs (or resumes) the configured training in `workdir` and returns the final results.

  `chance` (task -> chance-level score) only annotates the final table. Raises ValueError
  (naming the config key) for a bad config or one whose shapes differ from the workdir's
  checkpoints, WorkdirBusyError when another trainer holds the workdir, FloatingPointError
  when training diverges; in each case before anything of the run is written or overwritten.
  """
  # ------------------------------------------------------------------ Set up
  distributed.maybe_initialize(config)
  # Before reading data or compiling: a wrong bucket should cost seconds, not minutes.
  paths.check_bucket(workdir, "--workdir")
  if config.data.source == "tfds":
    paths.check_bucket(config.data.data_dir, "config.data.data_dir")
  tasks = resolve_tasks(config)
  mesh = sharding.mesh_from_config(config.mesh)
  validate_config(config, tasks, mesh)
  model_config = run_model_config(config)
  options.validate(config, model_config)
  paths.as_path(workdir).mkdir(parents=True, exist_ok=True)
  # One trainer per workdir: a second one stops here, before it reads or writes anything.
  with workdir_lock.hold(workdir, process_index=jax.process_index(),
                         process_count=jax.process_count()) as lock, \
       contextlib.ExitStack() as cleanup:
    return _train_and_evaluate(config, workdir, chance, tasks, mesh, model_config, lock,
                               cleanup)


def _train_and_evaluate(config, workdir: str, chance, tasks: list[Task], mesh, model_config,
                        lock, cleanup: contextlib.ExitStack) -> RunResult:
  """`train_and_evaluate` once the config is checked and the workdir is this run's.

  `cleanup` closes the checkpointer (finishing a save in flight) and the log however this
  ends, before the lock is given back.
  """
  rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                for name, axes in config.mesh.rules)
  data = build_task_data(config, tasks, model_config)
  model_config = model_config.replace(**answer_head_sizes(data))
  model = ViLBertForVLTasks(model_config)
  is_chief = jax.process_index() == 0
  # Before any key exists: resolving to threefry switches on its partitionable form.
  prng_name = config.get("prng_impl", prng.AUTO)
  prng_impl = prng.resolve_impl(prng_name)

  # ------------------------------------------------------------------ Shapes and shardings
  boxed = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
  logical = nn.get_partition_spec(boxed)["params"]
  abstract_params = nn.meta.unbox(boxed)["params"]
  param_shardings = sharding.tree_shardings(abstract_params, logical, mesh, rules)
  replicated = sharding.replicated(mesh)
  optimizer_config = options.optimizer_config(config, model_config)
  abstract_opt_state = jax.eval_shape(lambda p: opt.init_state(p, optimizer_config),
                                      abstract_params)
  state_shardings = TrainState(step=replicated, params=param_shardings,
                               opt_state=opt.state_shardings(abstract_opt_state, abstract_params,
                                                             param_shardings, replicated))
  checkpointer = Checkpointer(workdir, keep=config.checkpoint.keep,
                              asynchronous=config.checkpoint.asynchronous)
  cleanup.callback(checkpointer.close)
  abstract_state = abstract_like(
      TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                 opt_state=abstract_opt_state), state_shardings)
  # Another model's checkpoints (a changed shape) stop the run here, before the log below
  # writes its first line: resuming would otherwise start over and overwrite that run.
  checkpointer.check_compatible(abstract_state)
  log = MetricsLog(workdir, enabled=is_chief, log_every=config.log_every)
  cleanup.callback(log.close)
  log.note(f"tasks: {[t.name for t in tasks]}; mesh {dict(mesh.shape)}; "
           f"{jax.process_count()} process(es), {jax.device_count()} device(s)")
  log.note(prng.describe(prng_name, prng_impl))

  # ------------------------------------------------------------------ Schedule
  lengths = {t.name: loader_length(data[t.name].num_train_examples, t.batch_size) for t in tasks}
  per_epoch = config.schedule.iterations_per_epoch or iterations_per_epoch(
      list(lengths.values()), config.schedule.get("train_iter_multiplier", 1.0))
  dsg = config.dsg
  schedule = Schedule(
      task_names=[t.name for t in tasks], task_epoch_iterations=lengths,
      iterations_per_epoch=per_epoch, num_epochs=config.schedule.num_epochs,
      kind=config.schedule.kind, weights={t.name: config.task_settings[t.name].weight
                                          for t in tasks}, seed=config.seed,
      dsg_enabled=dsg.enabled and config.schedule.kind != "summed",
      dsg=DSGConfig(threshold=dsg.threshold, continue_threshold=dsg.continue_threshold,
                    patience=dsg.patience, cooldown=dsg.cooldown,
                    train_iter_gap=dsg.train_iter_gap, reset_epochs=tuple(dsg.reset_epochs)))
  total = schedule.total_iterations
  lr = options.learning_rate_schedule(config, total)

  # ------------------------------------------------------------------ Steps
  batch_sh = sharding.batch_sharding(mesh)
  train_steps = StepCache(
      lambda task: make_train_step(
          model.apply, task, StepSettings(optimizer_config, loss_scale(task, tasks),
                                          config.optimizer.grad_accum_steps, rules,
                                          model_config)),
      in_shardings=(state_shardings, batch_sh, replicated, replicated),
      out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  # The "summed" schedule: one compiled step over every task of the run (all tasks step at
  # every iteration there, so there is exactly one combination to compile).
  summed_steps = jax.jit(make_summed_step(
      model.apply, tasks, StepSettings(optimizer_config, 1.0, 1, rules, model_config),
      {t.name: loss_scale(t, tasks) for t in tasks}),
      in_shardings=(state_shardings, batch_sh, replicated, replicated),
      out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  eval_steps = StepCache(lambda task: make_eval_step(model.apply, task, rules),
                         in_shardings=(param_shardings, batch_sh),
                         out_shardings=(replicated, replicated))

  # Dropout keys (`train/prng.py`): "counter_hash" hashes each element's index inside the
  # fused dropout (no random tensor in memory; the same bits under every sharding); "rbg" and
  # "threefry2x32" are JAX's. "auto" was resolved for this backend above.
  base_key = prng.dropout_key(config.seed, prng_impl)
  # Compile before the state exists: the compiler's working memory and the state's (a few GiB
  # for `base`) then never add up in the peak RSS. A finished run skips this.
  if (checkpointer.latest_step() or 0) < total and schedule.kind != "summed":
    started = time.perf_counter()
    with jax.set_mesh(mesh):
      train_steps.warm_up([(t, (abstract_state, batch_shapes(data[t.name], mesh,
                                                              model_config.vocab_size),
                                base_key, np.float32(0))) for t in tasks],
                          max_workers=config.compile_threads)
    log.note(f"compiled {len(tasks)} training steps in {time.perf_counter() - started:.0f} s")
    hostmem.release_free_memory()   # the compiler's freed memory, before the state exists
    distributed.wait_for_all_processes("twelve_in_one_steps_compiled")

  # ------------------------------------------------------------------ State
  restored = checkpointer.restore_latest(abstract_state, report=log.note)
  if restored is not None:
    start_iteration, state_dict, host = restored
    state = TrainState(**state_dict)
    log.note(f"resumed from {checkpointer.directory}/{start_iteration}")
  else:
    start_iteration, host = 0, {}
    state = initial_state(config, model, model_config, state_shardings, log.note,
                          optimizer_config)

  schedule.load_json(host.get("schedule", {}))
  if "lr_schedule" in host:
    lr.load_json(host["lr_schedule"])

  iterators = {t.name: data[t.name].train_iterator() for t in tasks}
  for name, it_state in host.get("iterators", {}).items():
    if name in iterators:
      iterators[name].set_state(it_state)
  task_by_name = {t.name: t for t in tasks}

  # ------------------------------------------------------------------ Loop
  stop = {"signal": None}
  previous_handler = _install_sigterm(stop)
  results: dict[str, dict] = dict(host.get("results", {}))
  pending: list[tuple[int, str, dict]] = []
  progress = tqdm.tqdm(total=total, initial=start_iteration, disable=not is_chief,
                       desc="train", unit="it", dynamic_ncols=True)
  iteration = start_iteration
  live = {"state": state}

  def train(names: list[str], lr_multiplier: float) -> None:
    """One optimizer step over `names` (one task; every task for `summed`)."""
    if schedule.kind == "summed":
      live["state"] = _summed_iteration(names, summed_steps, live["state"], iterators, mesh,
                                        base_key, iteration, lr_multiplier, pending, log,
                                        task_by_name)
      return
    task = task_by_name[names[0]]
    started = time.perf_counter()
    batch = device_batch(next(iterators[task.name]), mesh)
    rng = jax.random.fold_in(jax.random.fold_in(base_key, iteration), task.task_id)
    live["state"], metrics = train_steps(task)(live["state"], batch, rng,
                                               np.float32(lr_multiplier))
    _check_pending(pending, log)          # the previous step's loss, one step behind
    pending.append((iteration, task.name, metrics))
    log.accumulate(task.name, started, task.batch_size)

  def evaluate(name: str) -> float:
    _check_pending(pending, log, keep_last=False)   # never evaluate a diverged state
    result = evaluate_task(data[name], eval_steps(task_by_name[name]), live["state"].params,
                           mesh, config.eval_max_batches)
    results[name] = dict(result, iteration=iteration + 1)
    return result["score"]

  try:
    with jax.set_mesh(mesh):
      for iteration in range(start_iteration, total):
        lr_at_start = lr.multiplier * optimizer_config.base_lr
        report = schedule.run_iteration(
            iteration, lr, train, evaluate if config.eval_during_training else None)
        _check_pending(pending, log, keep_last=False)
        log.train_iteration(iteration, lr_at_start, schedule, last=iteration + 1 == total)
        for name, _, controller in report.evaluations:
          log.eval(iteration, name, results[name], controller)
        if report.epoch is not None:
          log.note(f"epoch {report.epoch} done at iteration {iteration + 1}")
        progress.update(1)
        state = live["state"]

        done = iteration + 1
        host_state = lambda: {"iteration": done, "schedule": schedule.to_json(),
                              "lr_schedule": lr.to_json(),
                              "iterators": {n: it.get_state() for n, it in iterators.items()},
                              "results": results, "seed": config.seed}
        lock.check()   # a trainer that lost the workdir to another one saves nothing more
        if stop["signal"] is not None:
          checkpointer.save(done, state, host_state(), wait=True)
          log.note(f"SIGTERM: saved iteration {done} to {checkpointer.directory}; exiting")
          raise Preempted(done)
        if done % config.checkpoint.every_iterations == 0 or done == total:
          checkpointer.save(done, state, host_state(), wait=done == total)
  except Preempted:
    return RunResult(iteration + 1, results, live["state"], train_steps.compilations(),
                     preempted=True)
  finally:
    progress.close()
    signal.signal(signal.SIGTERM, previous_handler)
    checkpointer.close()
    log.close()

  # The final table: every task on its whole validation split (during training, DSG may
  # have looked at a prefix only, see config.eval_max_batches).
  with jax.set_mesh(mesh):
    for task in tasks:
      results[task.name] = dict(evaluate_task(data[task.name], eval_steps(task), state.params,
                                              mesh), iteration=total)
  if is_chief:
    results_table(workdir, tasks, results, chance)
  return RunResult(total, results, state, train_steps.compilations())


def _summed_iteration(names, summed_step, state, iterators, mesh, base_key, iteration,
                      lr_multiplier, pending, log, task_by_name):
  """One summed-gradient update over every task's next batch."""
  started = time.perf_counter()
  batches = {name: device_batch(next(iterators[name]), mesh) for name in names}
  rng = jax.random.fold_in(base_key, iteration)
  state, metrics = summed_step(state, batches, rng, np.float32(lr_multiplier))
  _check_pending(pending, log)
  for name in names:
    pending.append((iteration, name, metrics[name]))
    log.accumulate(name, started, task_by_name[name].batch_size)
  return state


def _check_pending(pending: list, log, keep_last: bool = True) -> None:
  """Fetches finished steps' metrics; a NaN/Inf loss, or an update that left non-finite
  parameters or moments, stops the run naming task and iteration.

  The loop drains this at the end of every iteration, before it may save, so a non-finite
  state is never checkpointed.
  """
  while len(pending) > (1 if keep_last else 0):
    iteration, name, metrics = pending.pop(0)
    values = dict(jax.device_get(metrics))
    finite = bool(values.pop("finite", True))
    loss = float(values["loss"])
    if not math.isfinite(loss):
      raise FloatingPointError(
          f"task {name}: loss is {loss} at iteration {iteration}; stopping. The last good "
          "checkpoint is kept in the workdir (nothing was saved after this step)")
    if not finite:
      raise FloatingPointError(
          f"task {name}: non-finite parameters or Adam moments after the update at iteration "
          f"{iteration} (loss {loss:.4g}; is the learning rate too high?); stopping. The last "
          "good checkpoint is kept in the workdir (nothing was saved after this step)")
    log.train_step(iteration, name, values)


def _install_sigterm(stop: dict):
  def handler(signum, frame):
    del frame
    stop["signal"] = signum
  try:
    return signal.signal(signal.SIGTERM, handler)
  except ValueError:   # not the main thread (e.g. inside some test runners): no handler
    return signal.getsignal(signal.SIGTERM)
