"""Per-item predictions and the official metric of every head type, on eval batches.

The prediction step is the trainer's eval step (`train/steps.make_eval_step`: the task's head
only, dropout off, the head's loss and per-example score) plus the decoded prediction of every
example, computed on the device so that only a few numbers per example come back:

| head type | decoded | per-item record |
|---|---|---|
| VL-classifier(-GQA) | argmax answer | question_id, label, answer (vocabulary string), score |
| V-logit | argmax region, its box and IoU | id, region, box, iou, correct (IoU > 0.5) |
| V-logit-mc | argmax candidate, its region and box | id, choice, region, box, correct |
| VL-binary / VL-tri | argmax label, softmax | id, label, prediction, probabilities, correct |
| VL-logit (4-way form) | argmax option | id, option, correct |

Boxes are the model's normalised region boxes [x1, y1, x2, y2] (fractions of the image width and
height): the prepared data keeps no pixel sizes. The official metric of a split is the mean
per-example score over its real examples (padding rows are masked), exactly the trainer's
validation number; a split without any ground truth (VQA/GQA test) has no local score, only
its submission file.

Example ids are int64 (VQA question ids, GQA ids); with JAX's default 32-bit integers they
travel to the device and back as two int32 halves.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from twelve_in_one.tasks import losses
from twelve_in_one.tasks.registry import TASKS, TWELVE_TASKS, Task
from twelve_in_one.train.objective import task_outputs

# The class names of the one-hot head types, as the paper's tasks that use them name them
# (each task's own are `Task.class_names`).
LABEL_NAMES = {TASKS[name].head_type: TASKS[name].class_names for name in TWELVE_TASKS
               if TASKS[name].class_names}
CLASSIFIERS = ("VL-classifier", "VL-classifier-GQA")
_LOW_BITS = 31


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """int64 ids -> (high, low) int32 halves (non-negative ids below 2**62)."""
  ids = np.asarray(ids, np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= 1 << 62):
    raise ValueError(f"example ids must be in [0, 2**62), got [{ids.min()}, {ids.max()}]")
  return (ids >> _LOW_BITS).astype(np.int32), (ids & ((1 << _LOW_BITS) - 1)).astype(np.int32)


def join_ids(high: np.ndarray, low: np.ndarray) -> np.ndarray:
  return (np.asarray(high, np.int64) << _LOW_BITS) | np.asarray(low, np.int64)


def decode(task: Task, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
           ) -> dict[str, jax.Array]:
  """The decoded prediction of every example of a batch (see the module table)."""
  kind = task.head_type
  if kind in CLASSIFIERS:
    logits = outputs[task.output]
    target = batch["target"]
    return {"label": jnp.argmax(logits, axis=-1).astype(jnp.int32),
            "labelled": (target.sum(axis=-1) > 0).astype(jnp.int32)}
  if task.head_spec.target == "onehot":
    logits = outputs[task.output].astype(jnp.float32)
    target = batch["target"]
    return {"label": jnp.argmax(logits, axis=-1).astype(jnp.int32),
            "probabilities": jax.nn.softmax(logits, axis=-1),
            "labelled": (target.sum(axis=-1) > 0).astype(jnp.int32)}
  if kind == "V-logit":
    logits = outputs["vision_logit"][..., 0]
    region = jnp.argmax(logits, axis=1)
    target = batch["target"].reshape(logits.shape)
    return {"region": region.astype(jnp.int32),
            "box": _boxes_at(batch["image_loc"], region),
            "iou": jnp.take_along_axis(target, region[:, None], axis=1)[:, 0],
            "labelled": jnp.ones_like(region, jnp.int32)}
  if kind == "V-logit-mc":
    candidates = losses.candidate_logits(outputs["vision_logit"], batch["multiple_choice_ids"],
                                         task.num_detected_regions)
    choice = jnp.argmax(candidates, axis=1)
    ids = batch["multiple_choice_ids"].astype(jnp.int32)
    region = task.num_detected_regions + jnp.take_along_axis(ids, choice[:, None], axis=1)[:, 0]
    return {"choice": choice.astype(jnp.int32), "region": region,
            "box": _boxes_at(batch["image_loc"], region),
            "labelled": jnp.ones_like(choice, jnp.int32)}
  if kind == "VL-logit":
    scores = losses.option_scores(outputs["vil_logit"], task.num_options)
    option = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return {"option": option, "labelled": jnp.ones_like(option)}
  raise ValueError(f"task {task.name}: no decoder for head type {kind!r}")


def _boxes_at(image_loc: jax.Array, region: jax.Array) -> jax.Array:
  return jnp.take_along_axis(image_loc[..., :4], region[:, None, None], axis=1)[:, 0]


def make_prediction_step(apply_fn: Callable, task: Task, rules: tuple = ()) -> Callable:
  """`(params, batch) -> {loss, scores, decoded fields, example ids, mask}` with dropout off.

  The loss and scores are those of the trainer's eval step; the batch's `example_mask`,
  `example_id_high` and `example_id_low` come back unchanged so that every process can pair
  replicated results with example ids.
  """

  def step(params, batch):
    with nn.logical_axis_rules(rules):
      outputs = task_outputs(apply_fn, params, task, batch)
    result = {"loss": task.head.loss(outputs, batch, task),
              "scores": task.head.score(outputs, batch, task)}
    result.update(decode(task, outputs, batch))
    for key in ("example_mask", "example_id_high", "example_id_low"):
      result[key] = batch[key]
    return result

  return step


def device_fields(batch: dict[str, np.ndarray], position: int) -> dict[str, np.ndarray]:
  """The numeric batch leaves for the device, with example ids split and a mask ensured.

  `position` numbers the examples of a batch without ids (synthetic data).
  """
  rows = batch["input_ids"].shape[0]
  out = {k: v for k, v in batch.items() if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"
         and k not in ("example_id", "example_mask")}
  mask = batch.get("example_mask", np.ones((rows,), np.int32))
  out["example_mask"] = np.asarray(mask, np.int32)
  ids = batch.get("example_id", np.arange(position, position + rows, dtype=np.int64))
  out["example_id_high"], out["example_id_low"] = split_ids(ids)
  return out


def item_records(task: Task, result: dict[str, np.ndarray],
                 label2ans: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Per-item prediction records of the real (unmasked) examples of one step result."""
  ids = join_ids(result["example_id_high"], result["example_id_low"])
  keep = np.flatnonzero(np.asarray(result["example_mask"]) > 0)
  kind = task.head_type
  records = []
  for row in keep:
    example_id = int(ids[row])
    labelled = bool(result["labelled"][row])
    score = float(result["scores"][row])
    if kind in CLASSIFIERS:
      label = int(result["label"][row])
      record = {"question_id": example_id, "label": label}
      if label2ans is not None:
        if label >= len(label2ans):
          raise ValueError(f"task {task.name}: predicted label {label} is outside the answer "
                           f"vocabulary of {len(label2ans)} answers")
        record["answer"] = label2ans[label]
      if labelled:
        record["score"] = score
    elif task.head_spec.target == "onehot":
      label = int(result["label"][row])
      name = task.class_names[label] if task.class_names else str(label)
      record = {"id": example_id, "label": label, "prediction": name,
                "probabilities": [round(float(p), 6) for p in result["probabilities"][row]]}
      if labelled:
        record["correct"] = bool(score > 0)
    elif kind == "V-logit":
      record = {"id": example_id, "region": int(result["region"][row]),
                "box": [round(float(v), 6) for v in result["box"][row]],
                "iou": round(float(result["iou"][row]), 6), "correct": bool(score > 0)}
    elif kind == "V-logit-mc":
      record = {"id": example_id, "choice": int(result["choice"][row]),
                "region": int(result["region"][row]),
                "box": [round(float(v), 6) for v in result["box"][row]],
                "correct": bool(score > 0)}
    else:
      record = {"id": example_id, "option": int(result["option"][row]),
                "correct": bool(score > 0)}
    records.append(record)
  return records


class SplitScore:
  """Accumulates the official metric over the batches of one split (padding masked)."""

  def __init__(self) -> None:
    self.total = 0.0
    self.examples = 0
    self.labelled = 0
    self.losses: list[float] = []

  def add(self, result: dict[str, np.ndarray]) -> None:
    mask = np.asarray(result["example_mask"], np.float64) > 0
    self.total += float(np.asarray(result["scores"], np.float64)[mask].sum())
    self.examples += int(mask.sum())
    self.labelled += int(np.asarray(result["labelled"])[mask].sum())
    self.losses.append(float(result["loss"]))

  def summary(self) -> dict[str, Any]:
    """score (None without any ground truth), examples, labelled examples, mean loss."""
    has_truth = self.labelled > 0
    return {"score": self.total / max(self.examples, 1) if has_truth else None,
            "examples": self.examples, "labelled": self.labelled,
            "loss": float(np.mean(self.losses)) if self.losses and has_truth else None}
