"""From a task batch to the model's inputs: the reference's per-`process` reshapes.

A task batch is a dict of arrays with a leading batch axis B (examples):

| key | normal | retrieval (K options) | nlvr (2 images) |
|---|---|---|---|
| input_ids, input_mask, segment_ids | [B, T] | [B, K, T] | [B, T] |
| image_feat | [B, R, F] | [B, K, R, F] | [B, 2R, F] |
| image_loc | [B, R, 5] | [B, K, R, 5] | [B, 2R, 5] |
| image_mask | [B, R] | [B, K, R] | [B, 2R] |
| target | per head type | [B] int | [B, 2] |

* retrieval: every (B, K, ...) array is viewed as (B*K, ...), option-major within a caption
  (row K*b + k is option k of caption b).
* nlvr: the 2R regions are split into two images, (B, 2R, ...) -> (2B, R, ...), and the text is
  repeated so rows 2b and 2b+1 are statement b with its first and second image. This assumes
  image 0 fills its R regions, which holds for the release's 101-region features.
"""

from __future__ import annotations

import jax.numpy as jnp

from twelve_in_one.tasks.registry import Task

MODEL_KEYS = ("input_ids", "image_feat", "image_loc", "segment_ids", "input_mask", "image_mask")
TEXT_KEYS = ("input_ids", "input_mask", "segment_ids")


def model_inputs(task: Task, batch: dict) -> dict:
  """The keyword arguments of `ViLBertForVLTasks.__call__` for a task batch (sans task_ids)."""
  missing = [k for k in MODEL_KEYS if k not in batch]
  if missing:
    raise ValueError(f"task {task.name}: batch lacks {missing}; it has {sorted(batch)}")
  inputs = {k: batch[k] for k in MODEL_KEYS}
  if task.process == "retrieval":
    inputs = {k: v.reshape((-1,) + v.shape[2:]) for k, v in inputs.items()}
  elif task.process == "nlvr":
    images = task.images_per_example
    for key in TEXT_KEYS:
      inputs[key] = jnp.repeat(inputs[key], images, axis=0)
    for key in ("image_feat", "image_loc", "image_mask"):
      value = inputs[key]
      inputs[key] = value.reshape((value.shape[0] * images, value.shape[1] // images)
                                  + value.shape[2:])
  elif task.process != "normal":
    raise ValueError(f"task {task.name}: unknown process {task.process!r}; expected normal, "
                     "retrieval or nlvr")
  return inputs


def batch_size_of(batch: dict) -> int:
  """Examples in a task batch (captions for retrieval, statements for NLVR2)."""
  return int(batch["input_ids"].shape[0])
