"""Batches on the device mesh, and one evaluation pass over a task's validation split.

Used by the training loop (`loop.py`): the global shapes a task's step is compiled for, the
host batches made global arrays, and the score DSG and the final table read.
"""

from __future__ import annotations

import jax
import numpy as np

from twelve_in_one.train import sharding
from twelve_in_one.train.inputs import TaskData


def batch_shapes(task_data: TaskData, mesh, vocab_size: int) -> dict:
  """The global shapes and shardings of a task's training batches (for compiling ahead).

  Also checks the first batch's token ids against the model's vocabulary: an id past the
  embedding table would silently embed as NaN (JAX gathers out of range fill with NaN).
  """
  sample = task_data.train_iterator()
  batch = next(sample)
  if hasattr(sample, "close"):
    sample.close()
  largest = int(np.max(batch["input_ids"]))
  if largest >= vocab_size:
    raise ValueError(f"task {task_data.task.name}: token id {largest} in the data, but the "
                     f"model's vocab_size is {vocab_size}; the data was tokenized with another "
                     "vocabulary (set --config.model.vocab_size or --config.data.vocab)")
  sharded = sharding.batch_sharding(mesh)
  processes = jax.process_count()
  return {k: jax.ShapeDtypeStruct((v.shape[0] * processes,) + v.shape[1:], v.dtype,
                                  sharding=sharded)
          for k, v in batch.items() if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}


def device_batch(batch: dict, mesh) -> dict:
  """Numeric leaves as global arrays; host-only leaves (ids as strings) stay behind."""
  numeric = {k: v for k, v in batch.items()
             if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}
  return sharding.global_batch(numeric, mesh)


def evaluate_task(task_data: TaskData, eval_step, params, mesh, max_batches: int = 0) -> dict:
  """One pass over the task's validation split (or its first `max_batches` batches)."""
  total_score, total_examples, losses = 0.0, 0.0, []
  for index, batch in enumerate(task_data.eval_batches()):
    if max_batches and index >= max_batches:
      break
    mask = np.asarray(batch.get("example_mask", np.ones(batch["input_ids"].shape[0])))
    loss, scores = eval_step(params, device_batch(batch, mesh))
    scores = np.asarray(jax.device_get(scores)).reshape(-1)[:mask.shape[0]]
    total_score += float((scores * mask).sum())
    total_examples += float(mask.sum())
    losses.append(float(loss))
  total_examples = max(total_examples, 1.0)
  return {"score": total_score / total_examples, "loss": float(np.mean(losses)) if losses
          else float("nan"), "examples": int(total_examples)}
