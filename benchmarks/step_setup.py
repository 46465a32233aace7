"""The trainer's training step as the benchmarks compile it: jitted, the state donated.

Shared by `train_step.py` and `scan_layers.py`, so that both measure one program. Imports jax
only when called: the benchmarks' parent processes, which only spawn measurements, never load
it.
"""

from __future__ import annotations

from typing import Any


def donated_train_step(model: Any, task: Any, grad_accum_steps: int = 1) -> tuple[Any, Any]:
  """`make_train_step` for `task`, jitted with the state donated, and the state's shapes.

  As the trainer does (`StepCache.warm_up`), the step is meant to be compiled from the
  returned abstract state before any state exists, so the compiler's memory and the state's
  never add up. Default optimizer settings (the reference AdamW).
  """
  import jax

  from twelve_in_one.models import init_params
  from twelve_in_one.train import optimizer as opt
  from twelve_in_one.train.steps import StepSettings, create_state, make_train_step

  settings = StepSettings(opt.OptimizerConfig(), grad_accum_steps=grad_accum_steps)
  step = jax.jit(make_train_step(model.apply, task, settings), donate_argnums=(0,))
  abstract_state = jax.eval_shape(lambda: create_state(init_params(model, jax.random.key(0))))
  return step, abstract_state
