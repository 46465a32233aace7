"""Head types' loss and score functions: how a task's loss and per-example score are computed.

The reference groups its tasks by `type` (vilbert_tasks.yml). What a head type *is* (its model
output, target form and metric) is plain data in the registry (`registry.HEAD_SPECS`); a
`HeadType` here adds the loss and the per-example score, both pure functions of (outputs,
batch, task). A batch is the dict the data pipeline produces for the task (see `process.py`
for its layout).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import jax

from twelve_in_one.tasks import losses, scores
from twelve_in_one.tasks.registry import HEAD_SPECS, HeadSpec

if TYPE_CHECKING:
  from twelve_in_one.tasks.registry import Task

Outputs = dict[str, jax.Array]
Batch = dict[str, jax.Array]
LossOrScore = Callable[[Outputs, Batch, "Task"], jax.Array]


@dataclasses.dataclass(frozen=True)
class HeadType:
  spec: HeadSpec
  loss: LossOrScore
  score: LossOrScore

  @property
  def name(self) -> str:
    return self.spec.name

  @property
  def output(self) -> str:
    return self.spec.output

  @property
  def metric(self) -> str:
    return self.spec.metric


def _target_at_argmax(loss: Callable[[jax.Array, jax.Array], jax.Array]
                      ) -> tuple[LossOrScore, LossOrScore]:
  """Soft or one-hot targets over classes, scored by the target at the argmax class."""
  return (lambda o, b, t: loss(o[t.output], b["target"]),
          lambda o, b, t: scores.target_at_argmax(o[t.output], b["target"]))


# Head type -> (loss, score). Each reads its task's own output, `Task.output`.
_FUNCTIONS: dict[str, tuple[LossOrScore, LossOrScore]] = {
    "VL-classifier": _target_at_argmax(losses.soft_bce_loss),
    "VL-classifier-GQA": _target_at_argmax(losses.soft_bce_loss),
    "VL-logit": (
        lambda o, b, t: losses.retrieval_ce_loss(o[t.output], b["target"], t.num_options),
        lambda o, b, t: scores.option_accuracy(o[t.output], b["target"], t.num_options)),
    "V-logit": (
        lambda o, b, t: losses.region_bce_loss(o[t.output], b["target"]),
        lambda o, b, t: scores.grounding_accuracy(o[t.output], b["target"])),
    "V-logit-mc": (
        lambda o, b, t: losses.candidate_bce_loss(o[t.output], b["multiple_choice_ids"],
                                                  b["target"], t.num_detected_regions),
        lambda o, b, t: scores.candidate_accuracy(o[t.output], b["multiple_choice_ids"],
                                                   b["target"], t.num_detected_regions)),
    "VL-binary-classifier": _target_at_argmax(losses.onehot_bce_loss),
    "VL-tri-classifier": _target_at_argmax(losses.onehot_bce_loss),
}
if set(_FUNCTIONS) != set(HEAD_SPECS):
  raise ImportError(f"head_types.py: loss functions for {sorted(_FUNCTIONS)}, but the registry's "
                    f"head types are {sorted(HEAD_SPECS)}")

HEAD_TYPES: dict[str, HeadType] = {name: HeadType(spec, *_FUNCTIONS[name])
                                   for name, spec in HEAD_SPECS.items()}


def get_head_type(name: str) -> HeadType:
  if name not in HEAD_TYPES:
    raise ValueError(f"unknown head type {name!r}; expected one of {sorted(HEAD_TYPES)}")
  return HEAD_TYPES[name]
