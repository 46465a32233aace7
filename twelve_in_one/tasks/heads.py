"""Head types: which model output a task reads, and how its loss and score are computed.

The reference groups its tasks by `type` (vilbert_tasks.yml). A head type here is one frozen
record: the model output it needs (the only head the compiled step computes), the loss and the
per-example score, both as pure functions of (outputs, batch, task). A batch is the dict the
data pipeline produces for the task (see `process.py` for its layout).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import jax

from twelve_in_one.tasks import losses, metrics

if TYPE_CHECKING:
  from twelve_in_one.tasks.registry import Task

Outputs = dict[str, jax.Array]
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class HeadType:
  name: str
  output: str
  loss: Callable[[Outputs, Batch, "Task"], jax.Array]
  score: Callable[[Outputs, Batch, "Task"], jax.Array]
  metric: str


def _classifier(output: str) -> tuple[Callable, Callable]:
  return (lambda o, b, t: losses.soft_bce_loss(o[output], b["target"]),
          lambda o, b, t: metrics.target_at_argmax(o[output], b["target"]))


def _onehot(output: str) -> tuple[Callable, Callable]:
  return (lambda o, b, t: losses.onehot_bce_loss(o[output], b["target"]),
          lambda o, b, t: metrics.target_at_argmax(o[output], b["target"]))


HEAD_TYPES: dict[str, HeadType] = {
    "VL-classifier": HeadType("VL-classifier", "vil_prediction",
                              *_classifier("vil_prediction"), "soft accuracy"),
    "VL-classifier-GQA": HeadType("VL-classifier-GQA", "vil_prediction_gqa",
                                  *_classifier("vil_prediction_gqa"), "accuracy"),
    "VL-logit": HeadType(
        "VL-logit", "vil_logit",
        lambda o, b, t: losses.retrieval_ce_loss(o["vil_logit"], b["target"], t.num_options),
        lambda o, b, t: metrics.option_accuracy(o["vil_logit"], b["target"], t.num_options),
        "4-way accuracy"),
    "V-logit": HeadType(
        "V-logit", "vision_logit",
        lambda o, b, t: losses.region_bce_loss(o["vision_logit"], b["target"]),
        lambda o, b, t: metrics.grounding_accuracy(o["vision_logit"], b["target"]),
        "accuracy (IoU > 0.5)"),
    "V-logit-mc": HeadType(
        "V-logit-mc", "vision_logit",
        lambda o, b, t: losses.candidate_bce_loss(o["vision_logit"], b["multiple_choice_ids"],
                                                  b["target"], t.num_detected_regions),
        lambda o, b, t: metrics.candidate_accuracy(o["vision_logit"], b["multiple_choice_ids"],
                                                   b["target"], t.num_detected_regions),
        "pointing accuracy"),
    "VL-binary-classifier": HeadType("VL-binary-classifier", "vil_binary_prediction",
                                     *_onehot("vil_binary_prediction"), "accuracy"),
    "VL-tri-classifier": HeadType("VL-tri-classifier", "vil_tri_prediction",
                                  *_onehot("vil_tri_prediction"), "accuracy"),
}


def get_head_type(name: str) -> HeadType:
  if name not in HEAD_TYPES:
    raise ValueError(f"unknown head type {name!r}; expected one of {sorted(HEAD_TYPES)}")
  return HEAD_TYPES[name]
