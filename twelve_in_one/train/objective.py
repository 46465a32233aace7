"""The per-task objective: model forward on a task batch -> (loss, per-example scores).

This is where the model and the task registry meet. Only the task's own head is computed
(`outputs=(task.output,)`), so the other heads get exactly zero gradient and cost nothing.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from twelve_in_one.tasks import model_inputs
from twelve_in_one.tasks.registry import Task


def task_outputs(apply_fn: Callable[..., dict], params: Any, task: Task, batch: dict, *,
                 deterministic: bool = True, rng: jax.Array | None = None,
                 extra_outputs: tuple[str, ...] = ()) -> dict[str, jax.Array]:
  """Runs the model on a task batch with the task's token and head (plus `extra_outputs`)."""
  inputs = model_inputs(task, batch)
  rngs = {} if rng is None else {"dropout": rng}
  return apply_fn({"params": params}, **inputs, task_ids=task.task_id,
                  outputs=(task.output,) + tuple(extra_outputs), deterministic=deterministic,
                  rngs=rngs)


def task_loss(apply_fn: Callable[..., dict], params: Any, task: Task, batch: dict, *,
              deterministic: bool = True, rng: jax.Array | None = None,
              loss_scale: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(scaled loss, aux) for `jax.value_and_grad(..., has_aux=True)`.

  aux holds the unscaled `loss` (the reference's reported value) and the per-example `scores`.
  """
  outputs = task_outputs(apply_fn, params, task, batch, deterministic=deterministic, rng=rng)
  loss = task.head.loss(outputs, batch, task)
  scores = task.head.score(outputs, batch, task)
  return loss * loss_scale, {"loss": loss, "scores": scores}

