"""Which tasks step at each iteration: round-robin with Dynamic Stop-and-Go, or weighted.

The schedule lives on the host and its whole state is plain JSON (design decision 5):

* `round_robin` (the reference): every iteration visits the tasks in order and each task that
  is not stopped takes one optimizer step; a stopped task still steps every `train_iter_gap`-th
  iteration. An epoch is the largest task's epoch (`iterations_per_epoch`).
* `weighted`: one task per iteration, drawn with probability proportional to its weight from a
  generator seeded by (seed, iteration), so the draw is reproducible across restarts.
* `summed`: every active task's loss in one summed update (the "multi-task gradient" variant).

Each task is evaluated on its own epoch boundary (its epoch measured in global iterations) and
at the last iteration; the DSG controllers are reset after the epochs in `reset_epochs`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from twelve_in_one.train.dsg import DSGConfig, StopAndGo

KINDS = ("round_robin", "weighted", "summed")


@dataclasses.dataclass
class Schedule:
  task_names: list[str]
  task_epoch_iterations: dict[str, int]   # iterations per epoch of each task (its loader length)
  iterations_per_epoch: int
  num_epochs: int
  kind: str = "round_robin"
  weights: dict[str, float] | None = None
  seed: int = 0
  dsg_enabled: bool = True
  dsg: DSGConfig = dataclasses.field(default_factory=DSGConfig)
  controllers: dict[str, StopAndGo] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"schedule.kind={self.kind!r}; expected one of {KINDS}")
    for name in self.task_names:
      self.controllers.setdefault(name, StopAndGo())

  @property
  def total_iterations(self) -> int:
    return self.iterations_per_epoch * self.num_epochs

  def tasks_at(self, iteration: int) -> list[str]:
    """The tasks that take a step at this iteration, in order."""
    active = [n for n in self.task_names
              if not self.dsg_enabled or self.controllers[n].trains_at(iteration, self.dsg)]
    if self.kind != "weighted" or not active:
      return active
    weights = np.asarray([(self.weights or {}).get(n, 1.0) for n in active], np.float64)
    rng = np.random.default_rng([self.seed, iteration])
    return [active[int(rng.choice(len(active), p=weights / weights.sum()))]]

  def evaluates_at(self, iteration: int) -> list[str]:
    """Tasks whose own epoch ends after this iteration (or all, after the last one)."""
    done = iteration + 1
    if done >= self.total_iterations:
      return list(self.task_names)
    return [n for n in self.task_names if done % self.task_epoch_iterations[n] == 0]

  def record_score(self, task: str, score: float) -> None:
    if self.dsg_enabled:
      self.controllers[task].step(score, self.dsg)

  def end_of_epoch(self, iteration: int) -> int | None:
    """The (0-based) epoch that ends after this iteration, resetting DSG where configured."""
    done = iteration + 1
    if done % self.iterations_per_epoch:
      return None
    epoch = done // self.iterations_per_epoch - 1
    if epoch in self.dsg.reset_epochs:
      for controller in self.controllers.values():
        controller.reset()
    return epoch

  def to_json(self) -> dict:
    return {"controllers": {n: c.to_json() for n, c in self.controllers.items()}}

  def load_json(self, state: dict) -> None:
    """Restores the controllers of the tasks still in the run (the task set may change)."""
    for name, controller in state.get("controllers", {}).items():
      if name in self.controllers:
        self.controllers[name] = StopAndGo.from_json(controller)


def loader_length(num_examples: int, batch_size: int) -> int:
  """Batches per epoch of a task: the reference's `len(DataLoader)` with drop_last=False."""
  return max(1, math.ceil(num_examples / batch_size))


def iterations_per_epoch(lengths: Sequence[int]) -> int:
  """The reference's `median_num_iter`, which is in fact the largest task's epoch."""
  return max(lengths)
