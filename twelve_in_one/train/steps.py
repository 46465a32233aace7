"""Jit-compiled per-task training and evaluation steps, and the state they start from.

One step per task: shapes are static per task, the state is donated, the
step computes only the task's head, and the optimizer (`optimizer.build`, an optax chain)
touches only the parameters the task's loss reaches, plus, with `unused_params="torch1"`,
those an earlier step reached (see `transforms.only_reached`). `StepCache` builds each step
once and counts XLA compilations, so a recompilation after warm-up is visible (and fails a
test).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from twelve_in_one import hostmem
from twelve_in_one.models.vilbert import all_outputs, dummy_inputs
from twelve_in_one.tasks.registry import Task
from twelve_in_one.train import optimizer as opt
from twelve_in_one.train.objective import task_loss, task_outputs


@flax.struct.dataclass
class TrainState:
  """Everything on device that a step changes: parameters, optimizer state, update count."""
  step: jax.Array
  params: Any
  opt_state: Any


def create_state(params: Any, optimizer: opt.OptimizerConfig | None = None) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=opt.init_state(params, optimizer))


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What a task's step needs besides the task: optimizer, scales, accumulation.

  `model` (the model's config) is needed when the layers are stacked (`scan_layers`): the
  optimizer's rules are decided per layer on the official names. `deterministic` trains with
  dropout off, as the official fixtures' eval-mode runs did (the heads' dropout of 0.1 is
  fixed, whatever the config's dropout).
  """
  optimizer: opt.OptimizerConfig
  loss_scale: float = 1.0
  grad_accum_steps: int = 1
  rules: tuple = ()
  model: Any = None
  deterministic: bool = False


def all_finite(params: Any, grad_norm: jax.Array, changed: Any) -> jax.Array:
  """Whether a step left the parameters and optimizer moments finite (one bool on device).

  The loop checks it with the step's loss before anything is saved: a finite loss can still
  come with an update that overflows (a huge learning rate), and the loss of the *next* step
  would expose that only after the poisoned state had been checkpointed. The moments need no
  pass of their own: from finite moments and a finite gradient AdamW makes finite moments, and
  the gradient's global norm, computed anyway, is finite only if every squared element is.
  Parameters outside `changed` did not change, so they are not scanned again. (On CPU, where
  XLA does not fuse this pass into the update, it adds a quarter to a half of the update's
  time; scanning the moments too would add twice that.)
  """
  flags = [jnp.all(jnp.isfinite(leaf))
           for leaf, on in zip(jax.tree.leaves(params), jax.tree.leaves(changed)) if on]
  return jnp.all(jnp.stack([jnp.isfinite(grad_norm)] + flags))


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _changed(reached: Any, config: opt.OptimizerConfig) -> Any:
  """The parameters an update may change: the reached ones, or with torch1 any of them."""
  if config.unused_params == "skip":
    return reached
  return jax.tree.map(lambda _: True, reached)


def _apply(settings: StepSettings, params: Any, grads: Any, opt_state: Any, reached: Any,
           lr_multiplier: jax.Array) -> tuple[Any, Any]:
  optimizer = opt.build(settings.optimizer, _abstract(params), reached, settings.model)
  updates, opt_state = optimizer.update(grads, opt_state, params, lr_multiplier=lr_multiplier)
  return optax.apply_updates(params, updates), opt_state


def _accumulated_grads(loss_fn: Callable, params: Any, batch: dict, rng: jax.Array,
                       steps: int):
  """Gradient of the mean loss over `steps` equal micro-batches.

  The same objective as one batch; what changes is the memory, the float32 summation order and
  the dropout draws. `loss_fn(params, batch, rng)`. Micro-batch `i` draws from `fold_in(rng, i)`:
  with one key for all, example `j` of every micro-batch would get the same masks, since the
  masks are a function of the key and the position in the (micro-)batch.
  """
  if steps == 1:
    return jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
  micro = jax.tree.map(lambda x: x.reshape((steps, x.shape[0] // steps) + x.shape[1:]), batch)

  def body(carry, micro_batch_and_index):
    micro_batch, index = micro_batch_and_index
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, micro_batch, jax.random.fold_in(rng, index))
    total_loss, total_grads = carry
    return (total_loss + loss, jax.tree.map(jnp.add, total_grads, grads)), aux

  zeros = jax.tree.map(jnp.zeros_like, params)
  (loss, grads), auxes = jax.lax.scan(body, (jnp.zeros(()), zeros),
                                      (micro, jnp.arange(steps, dtype=jnp.uint32)))
  aux = {"loss": auxes["loss"].mean(), "scores": auxes["scores"].reshape(-1)}
  return (loss / steps, aux), jax.tree.map(lambda g: g / steps, grads)


def make_train_step(apply_fn: Callable, task: Task, settings: StepSettings) -> Callable:
  """The pure training step `(state, batch, rng, lr_multiplier) -> (state, metrics)`.

  The parameters the task's loss reaches are found when the step is traced
  (`optimizer.reached_by`, on the micro-batch's shapes).
  """

  def loss_fn(params, batch, rng):
    return task_loss(apply_fn, params, task, batch, deterministic=settings.deterministic,
                     rng=rng, loss_scale=settings.loss_scale)

  def step(state: TrainState, batch: dict, rng: jax.Array, lr_multiplier: jax.Array):
    with nn.logical_axis_rules(settings.rules):
      micro = {k: jax.ShapeDtypeStruct((v.shape[0] // settings.grad_accum_steps,)
                                       + v.shape[1:], v.dtype) for k, v in batch.items()}
      reached = opt.reached_by(loss_fn, _abstract(state.params), micro, _abstract(rng))
      (_, aux), grads = _accumulated_grads(loss_fn, state.params, batch, rng,
                                           settings.grad_accum_steps)
    params, opt_state = _apply(settings, state.params, grads, state.opt_state, reached,
                               lr_multiplier)
    grad_norm = opt.global_norm(grads)
    metrics = {"loss": aux["loss"], "score": aux["scores"].mean(), "grad_norm": grad_norm,
               "finite": all_finite(params, grad_norm, _changed(reached, settings.optimizer))}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def make_summed_step(apply_fn: Callable, tasks: list[Task], settings: StepSettings,
                     loss_scales: dict[str, float]) -> Callable:
  """One update from the summed, scaled losses of several tasks (the "summed" schedule).

  `(state, batches: {task: batch}, rng, lr_multiplier) -> (state, {task: metrics})`. The
  alternative to the reference's sequential per-task updates: one gradient, one Adam step.
  """

  def step(state: TrainState, batches: dict, rng: jax.Array, lr_multiplier: jax.Array):
    def loss_fn(params, batches):
      total, auxes = 0.0, {}
      for task in tasks:
        with nn.logical_axis_rules(settings.rules):
          scaled, aux = task_loss(apply_fn, params, task, batches[task.name],
                                  deterministic=settings.deterministic,
                                  rng=jax.random.fold_in(rng, task.task_id),
                                  loss_scale=loss_scales[task.name])
        total, auxes[task.name] = total + scaled, aux
      return total, auxes

    reached = opt.reached_by(loss_fn, _abstract(state.params), _abstract(batches))
    (_, auxes), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batches)
    params, opt_state = _apply(settings, state.params, grads, state.opt_state, reached,
                               lr_multiplier)
    finite = all_finite(params, opt.global_norm(grads), _changed(reached, settings.optimizer))
    metrics = {name: {"loss": aux["loss"], "score": aux["scores"].mean(), "finite": finite}
               for name, aux in auxes.items()}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def make_eval_step(apply_fn: Callable, task: Task, rules: tuple = ()) -> Callable:
  """`(params, batch) -> (loss, per-example scores)` with dropout off."""

  def step(params, batch):
    with nn.logical_axis_rules(rules):
      outputs = task_outputs(apply_fn, params, task, batch)
    return task.head.loss(outputs, batch, task), task.head.score(outputs, batch, task)

  return step


def initial_state(config, model, model_config, state_shardings,
                  note: Callable[[str], None],
                  optimizer: opt.OptimizerConfig | None = None) -> TrainState:
  """Fresh parameters (born sharded), optionally overwritten from an init checkpoint.

  Parameters and moments come from two programs: one program making both held the random
  init's temporaries and all three trees at once, and for `base` peaked above the training
  step itself (BENCHMARKS.md, "Trimmed compile memory and a two-program init").
  The values are the same either way. `note` receives the init checkpoint's report.
  """
  init = jax.jit(lambda key: _unboxed_init(model, key), out_shardings=state_shardings.params)
  params = init(jax.random.key(config.seed))
  hostmem.release_free_memory()
  make = functools.partial(create_state, optimizer=optimizer)
  state = jax.jit(make, out_shardings=state_shardings, donate_argnums=0)(params)
  if config.init.checkpoint or config.init.bert:
    from twelve_in_one.train.init_checkpoint import load_init_params
    params, report = load_init_params(config, model_config, jax.device_get(state.params))
    note(report)
    state = jax.device_put(make(params), state_shardings)
  return state


def _unboxed_init(model, key):
  variables = model.init(key, **dummy_inputs(model.config), outputs=all_outputs(model.config))
  return nn.meta.unbox(variables)["params"]


class StepCache:
  """Compiles each task's step once, with fixed shardings, and counts compilations.

  `warm_up` compiles the tasks' steps ahead of time, optionally in parallel threads (XLA
  compiles without the GIL; on a 2-core machine that is slower than one at a time, so the
  default is 1). A task's compiled step then only accepts its own shapes, so a shape change is
  an error instead of a silent recompilation.
  """

  def __init__(self, builder: Callable[[Task], Callable], *, in_shardings, out_shardings,
               donate_argnums=()):
    self._builder = builder
    self._jit = functools.partial(jax.jit, in_shardings=in_shardings,
                                  out_shardings=out_shardings, donate_argnums=donate_argnums)
    self._steps: dict[str, Any] = {}
    self._compiled: dict[str, Any] = {}

  def _jitted(self, task: Task):
    if task.name not in self._steps:
      logging.info("building the step of task %s", task.name)
      self._steps[task.name] = self._jit(self._builder(task))
    return self._steps[task.name]

  def __call__(self, task: Task):
    return self._compiled.get(task.name) or self._jitted(task)

  def warm_up(self, tasks_and_args: list[tuple[Task, tuple]], max_workers: int = 1) -> None:
    """Compiles the steps of the given (task, example arguments) pairs in parallel.

    The example arguments may be arrays or `jax.ShapeDtypeStruct`s of the real shapes.
    """
    todo = [(t, a) for t, a in tasks_and_args if t.name not in self._compiled]
    lowered = [(t, self._jitted(t).lower(*args)) for t, args in todo]   # tracing: not threaded
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
      compiled = list(pool.map(lambda item: item[1].compile(), lowered))
    for (task, _), executable in zip(lowered, compiled):
      self._compiled[task.name] = executable

  def compilations(self) -> dict[str, int]:
    """Number of compiled variants of each task's step (1 after warm-up, never more)."""
    names = set(self._steps) | set(self._compiled)
    return {name: int(name in self._compiled) + (self._steps[name]._cache_size()
                                                  if name in self._steps else 0)
            for name in names}
