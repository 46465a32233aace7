"""The pretraining job: `pretrain(config, workdir)`, `train_concap.py` as a resumable run.

Read top to bottom:

  Set up        distributed runtime, mesh, corpus and model, every check before anything is
                written; the workdir lock
  State         parameters and AdamW moments born sharded (BERT or a checkpoint loaded into
                them), or restored from the workdir's newest checkpoint
  Steps         the training step compiled ahead for the corpus' shapes; the validation step
  Loop          one update per step at lambda(step + 1), validation after each epoch,
                checkpoints every `checkpoint.every_steps` steps and at each epoch's end,
                SIGTERM -> save and stop
  Export        `<workdir>/pretrained`: the pretraining parameters for `config.init.checkpoint`
                of a multi-task run and for `twelve-in-one convert --direction export`

A checkpoint holds the device state (parameters, moments, update count; `train.checkpoint`)
and the host state: the data iterator's position and the validation history. The masks of a
batch are a function of (seed, epoch, record) (`data/concap/pipeline.py`), the dropout key of
step k is `fold_in(key(seed), k)` and the learning rate a function of k, so a resumed run
computes bitwise the same updates as an uninterrupted one.

Only process 0 writes logs and the export. A multi-process run leaves the export to a rerun of
the same command on one process (the finished run is restored onto its devices and exported):
the parameters are sharded across the processes, and a params checkpoint is written whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from twelve_in_one import hostmem, paths
from twelve_in_one.data.concap.pipeline import pretraining_iterator
from twelve_in_one.interop import checkpoint_io
from twelve_in_one.models import scan
from twelve_in_one.models.pretraining import (
  ViLBertForPretraining,
  init_pretraining_variables,
)
from twelve_in_one.pretrain import optimizer as pretrain_optimizer
from twelve_in_one.pretrain import settings as run_settings
from twelve_in_one.pretrain.data import ensure_corpus, open_checked_corpus
from twelve_in_one.pretrain.init_params import load_initial_params
from twelve_in_one.pretrain.log import PretrainingLog
from twelve_in_one.pretrain.steps import (
  LOSS_KEYS,
  StepSettings,
  create_state,
  make_eval_step,
  make_train_step,
  model_batch,
)
from twelve_in_one.train import distributed, prng, sharding, workdir_lock
from twelve_in_one.train import optimizer as train_optimizer
from twelve_in_one.train.checkpoint import Checkpointer, abstract_like
from twelve_in_one.train.loop import PREEMPTED_EXIT_STATUS, Preempted
from twelve_in_one.train.steps import TrainState

__all__ = ["PREEMPTED_EXIT_STATUS", "PRETRAINED_DIR", "PretrainResult", "pretrain"]

PRETRAINED_DIR = "pretrained"


@dataclasses.dataclass
class PretrainResult:
  steps: int                       # updates done
  state: Any                       # the final TrainState (sharded)
  validation: list[dict]           # one entry per finished epoch
  compilations: int                # compiled training steps (1, or 0 for a finished run)
  pretrained: str | None = None    # where the export was written (None: not written)
  preempted: bool = False


def pretrain(config, workdir: str, *, devices: list | None = None) -> PretrainResult:
  """Runs (or resumes, or exports a finished) pretraining in `workdir`: `twelve-in-one
  pretrain` without the flag parsing.

  With `config.data.generate_if_missing` the corpus is generated and prepared first
  (`pretrain/data.py`). `devices` (default: all) are the devices of the mesh. Raises
  ValueError naming the config key for a bad config or one whose shapes differ from the
  workdir's checkpoints, WorkdirBusyError when another trainer holds the workdir,
  FloatingPointError when training diverges; each before anything of the run is written or
  overwritten.
  """
  # ------------------------------------------------------------------ Set up
  distributed.maybe_initialize(config)
  paths.check_bucket(workdir, "--workdir")
  run_settings.validate_values(config)   # before generating anything for a bogus config
  ensure_corpus(config, workdir)
  paths.check_bucket(config.data.data_dir, "config.data.data_dir")
  mesh = sharding.mesh_from_config(config.mesh, devices)
  run_settings.check_batch(config, mesh, jax.process_count())
  model_config = run_settings.model_config(config)
  corpus = open_checked_corpus(config)
  run_settings.check_against_corpus(model_config, corpus.layout, config.data.data_dir)
  schedule = run_settings.schedule(
      config, int(corpus.split_info(config.data.train_split)["examples"]))
  paths.as_path(workdir).mkdir(parents=True, exist_ok=True)
  with workdir_lock.hold(workdir, process_index=jax.process_index(),
                         process_count=jax.process_count()) as lock, \
       contextlib.ExitStack() as cleanup:
    return _pretrain(config, workdir, mesh, model_config, schedule, lock, cleanup)


def _pretrain(config, workdir: str, mesh, model_config, schedule: run_settings.Schedule,
              lock, cleanup: contextlib.ExitStack) -> PretrainResult:
  rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                for name, axes in config.mesh.rules)
  settings = StepSettings(int(config.objective), float(config.img_weight),
                          run_settings.optimizer_config(config), model_config, rules,
                          int(config.optimizer.grad_accum_steps))
  model = ViLBertForPretraining(model_config)
  is_chief = jax.process_index() == 0
  # Before any key exists: resolving to threefry switches on its partitionable form.
  prng_name = config.get("prng_impl", prng.AUTO)
  prng_impl = prng.resolve_impl(prng_name)

  # ------------------------------------------------------------------ Shapes and shardings
  boxed = jax.eval_shape(lambda: init_pretraining_variables(model, jax.random.key(0)))
  abstract_params = nn.meta.unbox(boxed)["params"]
  param_shardings = sharding.tree_shardings(abstract_params,
                                            nn.get_partition_spec(boxed)["params"], mesh, rules)
  replicated = sharding.replicated(mesh)
  abstract_opt_state = jax.eval_shape(
      lambda p: pretrain_optimizer.init_state(p, settings.optimizer, model_config),
      abstract_params)
  state_shardings = TrainState(
      step=replicated, params=param_shardings,
      opt_state=train_optimizer.state_shardings(abstract_opt_state, abstract_params,
                                                param_shardings, replicated))
  abstract_state = abstract_like(
      TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                 opt_state=abstract_opt_state), state_shardings)
  checkpointer = Checkpointer(workdir, keep=config.checkpoint.keep,
                              asynchronous=config.checkpoint.asynchronous)
  cleanup.callback(checkpointer.close)
  # Another model's checkpoints stop the run here, before the log writes its first line.
  checkpointer.check_compatible(abstract_state)
  log = PretrainingLog(workdir, enabled=is_chief, log_every=config.log_every)
  cleanup.callback(log.close)
  total = schedule.total_steps
  log.note(f"pretraining: {schedule.steps_per_epoch} steps per epoch x {schedule.num_epochs} "
           f"epochs = {total} steps of batch {config.batch_size}; objective {config.objective}; "
           f"mesh {dict(mesh.shape)}; {jax.process_count()} process(es), "
           f"{jax.device_count()} device(s)")
  log.note(prng.describe(prng_name, prng_impl))

  # ------------------------------------------------------------------ Data
  processes = jax.process_count()
  per_process = config.batch_size // processes

  def batches(split: str, train: bool):
    return pretraining_iterator(
        config.data.data_dir, split, seed=config.seed, batch_size_per_process=per_process,
        process_index=jax.process_index(), process_count=processes, train=train,
        draw_negatives=settings.objective != 2, num_workers=config.data.num_workers)

  # ------------------------------------------------------------------ Steps
  batch_sh = sharding.batch_sharding(mesh)
  train_step = jax.jit(make_train_step(model.apply, settings),
                       in_shardings=(state_shardings, batch_sh, replicated, replicated),
                       out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  eval_step = jax.jit(make_eval_step(model.apply, settings),
                      in_shardings=(param_shardings, batch_sh), out_shardings=replicated)
  base_key = prng.dropout_key(config.seed, prng_name)
  compiled = None
  if (checkpointer.latest_step() or 0) < total:
    # Compiled before the state exists (the compiler's memory and the state's never add up),
    # for the corpus' shapes: a batch of other shapes is then an error, not a recompilation.
    started = time.perf_counter()
    with jax.set_mesh(mesh):
      compiled = train_step.lower(
          abstract_state, _batch_shapes(batches, config, model_config, batch_sh), base_key,
          np.float32(0)).compile()
    log.note(f"compiled the training step in {time.perf_counter() - started:.0f} s")
    hostmem.release_free_memory()
    distributed.wait_for_all_processes("twelve_in_one_pretrain_step_compiled")

  # ------------------------------------------------------------------ State
  restored = checkpointer.restore_latest(abstract_state, report=log.note)
  if restored is not None:
    start, state_dict, host = restored
    state = TrainState(**state_dict)
    log.note(f"resumed from {paths.describe(checkpointer.directory)}/{start}")
  else:
    start, host = 0, {}
    state = _initial_state(config, model, model_config, settings, param_shardings,
                           state_shardings, log.note)
  iterator = batches(config.data.train_split, train=True)
  if hasattr(iterator, "close"):
    cleanup.callback(iterator.close)
  if "iterator" in host:
    iterator.set_state(host["iterator"])
  validation: list[dict] = list(host.get("validation", []))

  def validate(params) -> dict:
    return _validate(batches(config.data.val_split, train=False), eval_step, params, mesh,
                     config.eval_max_batches)

  # ------------------------------------------------------------------ Loop
  stop = {"signal": None}
  previous_handler = _install_sigterm(stop)
  pending: list[tuple[int, Any, float]] = []
  progress = tqdm.tqdm(total=total, initial=start, disable=not is_chief, desc="pretrain",
                       unit="step", dynamic_ncols=True)
  step = start - 1
  try:
    with jax.set_mesh(mesh):
      last = time.perf_counter()
      for step in range(start, total):
        batch = sharding.global_batch(model_batch(next(iterator)), mesh)
        multiplier = schedule.lr_multiplier(step)
        state, metrics = compiled(state, batch, jax.random.fold_in(base_key, step),
                                  np.float32(multiplier))
        now = time.perf_counter()
        _check_pending(pending, log, config.batch_size, keep_last=True)
        pending.append((step, metrics, now - last))
        last = now
        done = step + 1
        epoch = schedule.epoch_ends_after(step)
        save = done % config.checkpoint.every_steps == 0 or done == total or epoch is not None
        if save or stop["signal"] is not None or done % config.log_every == 0:
          # Never log, validate or save a diverged state.
          _check_pending(pending, log, config.batch_size, keep_last=False)
        log.end_of_step(step, done / schedule.steps_per_epoch,
                        multiplier * settings.optimizer.lr, last=done == total)
        if epoch is not None and config.data.val_split:
          result = validate(state.params)
          validation.append(dict(result, step=done, epoch=epoch))
          log.validation(step, epoch, result)
          log.note(f"epoch {epoch} done at step {done}: validation loss {result['loss']:.4f} "
                   f"(masked LM {result['masked_lm_loss']:.4f}, masked regions "
                   f"{result['masked_img_loss']:.4f}, alignment "
                   f"{result['next_sentence_loss']:.4f})")
          last = time.perf_counter()   # validation is not training time
        progress.update(1)
        lock.check()   # a trainer that lost the workdir to another one saves nothing more
        preempted = stop["signal"] is not None
        if preempted and not save:   # SIGTERM came after the drain above
          _check_pending(pending, log, config.batch_size, keep_last=False)
        if save or preempted:
          host_state = {"step": done, "iterator": iterator.get_state(),
                        "validation": validation, "seed": config.seed}
          checkpointer.save(done, state, host_state, wait=done == total or preempted)
        if preempted:
          log.note(f"SIGTERM: saved step {done} to {paths.describe(checkpointer.directory)}; "
                   "exiting")
          raise Preempted(done)
  except Preempted:
    return PretrainResult(step + 1, state, validation, int(compiled is not None),
                          preempted=True)
  finally:
    progress.close()
    signal.signal(signal.SIGTERM, previous_handler)

  # ------------------------------------------------------------------ Export
  checkpointer.wait()
  exported = _export(workdir, state.params, model_config, config, total, log.note)
  return PretrainResult(total, state, validation, int(compiled is not None), exported)


def _batch_shapes(batches, config, model_config, batch_sh) -> dict:
  """Global shapes and shardings of the training batches, from a first batch of its own.

  Also checks the token ids against the model's vocabulary: an id past the embedding table
  would silently embed as NaN.
  """
  sample = batches(config.data.train_split, train=True)
  batch = model_batch(next(sample))
  if hasattr(sample, "close"):
    sample.close()
  largest = int(np.max(batch["input_ids"]))
  if largest >= model_config.vocab_size:
    raise ValueError(f"config.model.vocab_size: token id {largest} in the corpus, but the "
                     f"model's vocab_size is {model_config.vocab_size}")
  processes = jax.process_count()
  return {key: jax.ShapeDtypeStruct((value.shape[0] * processes,) + value.shape[1:],
                                    value.dtype, sharding=batch_sh)
          for key, value in batch.items()}


def _initial_state(config, model, model_config, settings, param_shardings, state_shardings,
                   note) -> TrainState:
  """Fresh parameters born sharded, `config.init` applied, and zero moments."""
  inputs = _dummy_inputs(model_config)
  init = jax.jit(lambda key: nn.meta.unbox(model.init(key, **inputs))["params"],
                 out_shardings=param_shardings)
  params = init(jax.random.key(config.seed))
  if config.init.bert or config.init.checkpoint:
    host = jax.tree.map(np.asarray, jax.device_get(params))
    host, report = load_initial_params(config, model_config, host)
    note(report)
    params = jax.device_put(host, param_shardings)
  hostmem.release_free_memory()
  return jax.jit(lambda p: create_state(p, settings), out_shardings=state_shardings,
                 donate_argnums=0)(params)


def _dummy_inputs(model_config) -> dict:
  from twelve_in_one.models.vilbert import dummy_inputs
  inputs = dummy_inputs(model_config)
  inputs.pop("task_ids")
  return inputs


def _validate(iterator, eval_step, params, mesh, max_batches: int) -> dict:
  """Each loss's mean over the validation batches (the official report), and the examples.

  The pipeline completes the split to whole batches with label-free rows, which no loss
  counts; the official loader drops the last partial batch instead.
  """
  sums: dict[str, Any] = {}
  count, examples = 0, 0.0
  for index, batch in enumerate(iterator):
    if max_batches and index >= max_batches:
      break
    examples += float(np.sum(batch["example_mask"]))
    losses = eval_step(params, sharding.global_batch(model_batch(batch), mesh))
    sums = losses if not sums else jax.tree.map(jnp.add, sums, losses)
    count += 1
  if hasattr(iterator, "close"):
    iterator.close()
  if not count:
    raise ValueError("config.data.val_split: the validation split gave no batch")
  values = {key: float(value) / count for key, value in jax.device_get(sums).items()}
  examples = _all_processes_sum(examples)
  return {**{key: values[key] for key in LOSS_KEYS}, "examples": int(examples)}


def _all_processes_sum(value: float) -> float:
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return float(np.sum(multihost_utils.process_allgather(np.float64(value))))


def _check_pending(pending: list, log: PretrainingLog, batch_size: int,
                   keep_last: bool = True) -> None:
  """Fetches finished steps' metrics into the log; a non-finite loss, or an update that left
  non-finite parameters or moments, stops the run naming the step (nothing of it saved)."""
  while len(pending) > (1 if keep_last else 0):
    step, metrics, seconds = pending.pop(0)
    values = jax.device_get(metrics)
    loss = float(values["loss"])
    if not math.isfinite(loss):
      raise FloatingPointError(
          f"pretraining: loss is {loss} at step {step}; stopping. The last good checkpoint is "
          "kept in the workdir (nothing was saved after this step)")
    if not bool(values["finite"]):
      raise FloatingPointError(
          f"pretraining: non-finite parameters or Adam moments after the update at step "
          f"{step} (loss {loss:.4g}; is the learning rate too high?); stopping. The last good "
          "checkpoint is kept in the workdir (nothing was saved after this step)")
    log.step(step, values, seconds, batch_size)


def _export(workdir: str, params, model_config, config, steps: int, note) -> str | None:
  """Writes `<workdir>/pretrained` (unless it exists); returns its location."""
  target = paths.as_path(workdir) / PRETRAINED_DIR
  if (target / checkpoint_io.META_FILE).exists():
    note(f"{paths.describe(target)} already holds this run's export")
    return paths.describe(target)
  if jax.process_count() > 1:
    note(f"the export {paths.describe(target)} is written by a rerun of this command on one "
         "process (the parameters are sharded across the processes)")
    return None
  host = jax.tree.map(np.asarray, jax.device_get(params))
  # The per-layer layout, which every reader takes (`scan.to_layout` converts on load).
  if model_config.scan_layers:
    host = scan.to_unrolled(host, model_config)
  meta = {checkpoint_io.ARCHITECTURE_KEY: "pretraining", "source": "twelve-in-one pretrain",
          "workdir": paths.describe(workdir), "steps": steps, "objective": int(config.objective),
          "img_weight": float(config.img_weight), "seed": int(config.seed)}
  path = checkpoint_io.save_params(os.fspath(target), host,
                                   model_config.replace(scan_layers=False), meta=meta,
                                   overwrite=True)
  note(f"wrote the pretrained parameters to {path} (config.init.checkpoint of a multi-task "
       "run; `twelve-in-one convert --direction export` for pretrained_model.bin)")
  return path


def _install_sigterm(stop: dict):
  def handler(signum, frame):
    del frame
    stop["signal"] = signum
  try:
    return signal.signal(signal.SIGTERM, handler)
  except ValueError:   # not the main thread: no handler
    return signal.getsignal(signal.SIGTERM)
