"""Which tasks step at each iteration, when each is evaluated, and the order of it all.

The schedule lives on the host and its whole state is plain JSON:

* `round_robin` (the official `train_tasks.py`): every iteration visits the tasks in order and
  each task that is not stopped takes one optimizer step; a stopped task still steps on
  iterations where `iteration % train_iter_gap == 0`. An epoch is the largest task's epoch
  (`iterations_per_epoch`).
* `weighted`: one task per iteration, drawn with probability proportional to its weight from a
  generator seeded by (seed, iteration), so the draw is reproducible across restarts.
* `summed`: every active task's loss in one summed update (the "multi-task gradient" variant).

`run_iteration` is the official loop body, in its order: each forwarded task's step at the
learning-rate multiplier of that moment (the warm-up scheduler steps after the first one,
`lr_schedule.py`), the cosine schedulers' step, then the evaluation of every task whose own
epoch is a divisor of the iteration (`iteration != 0 and iteration % len(its loader) == 0`,
and every task after the very last iteration), each feeding its Dynamic Stop-and-Go
controller; after an epoch's last iteration the epoch schedulers step and, after the epochs in
`reset_epochs`, the controllers are reset.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from twelve_in_one.train.dsg import DSGConfig, StopAndGo
from twelve_in_one.train.lr_schedule import LearningRateSchedule

KINDS = ("round_robin", "weighted", "summed")


@dataclasses.dataclass
class IterationReport:
  """What an iteration did: its steps as (task names, lr multiplier), its evaluations as
  (task, score, controller state right after), and the epoch it ended (or None)."""
  steps: list[tuple[tuple[str, ...], float]] = dataclasses.field(default_factory=list)
  evaluations: list[tuple[str, float, dict]] = dataclasses.field(default_factory=list)
  epoch: int | None = None


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
  latest_scores: dict[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"config.schedule.kind={self.kind!r}; expected one of {KINDS}")
    if self.dsg.train_iter_gap == 0:
      raise ValueError("config.dsg.train_iter_gap=0; expected a whole number of iterations "
                       "(a stopped task trains when iteration % train_iter_gap == 0)")
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
    """Tasks evaluated after this iteration: those whose loader length divides it (not 0),
    and all after the last one."""
    if iteration + 1 >= self.total_iterations:
      return list(self.task_names)
    return [n for n in self.task_names
            if iteration != 0 and iteration % self.task_epoch_iterations[n] == 0]

  def record_score(self, task: str, score: float) -> None:
    self.latest_scores[task] = float(score)
    if self.dsg_enabled:
      self.controllers[task].step(score, self.dsg)

  def epoch_ending_at(self, iteration: int) -> int | None:
    """The (0-based) epoch whose last iteration this is, or None."""
    done = iteration + 1
    return None if done % self.iterations_per_epoch else done // self.iterations_per_epoch - 1

  def run_iteration(self, iteration: int, lr: LearningRateSchedule,
                    train: Callable[[list[str], float], None],
                    evaluate: Callable[[str], float] | None) -> IterationReport:
    """One iteration of the official loop.

    `train(names, lr_multiplier)` runs one optimizer step over the named tasks (one task,
    or all of them for `summed`); `evaluate(name)` returns a task's validation score (None:
    no evaluation during training, and DSG never stops a task).
    """
    names = self.tasks_at(iteration)
    groups = [names] if self.kind == "summed" and names else [[name] for name in names]
    report = IterationReport()
    for index, group in enumerate(groups):
      report.steps.append((tuple(group), lr.multiplier))
      train(group, lr.multiplier)
      lr.after_step(first_task=index == 0)
    lr.end_of_iteration()
    if evaluate is not None:
      for name in self.evaluates_at(iteration):
        score = evaluate(name)
        self.record_score(name, score)
        report.evaluations.append((name, score, self.controllers[name].to_json()))
    report.epoch = self.epoch_ending_at(iteration)
    if report.epoch is not None:
      lr.end_of_epoch(report.epoch,
                      sum(self.latest_scores.values()) if self.latest_scores else None)
      if report.epoch in self.dsg.reset_epochs:
        for controller in self.controllers.values():
          controller.reset()
    return report

  def to_json(self) -> dict:
    return {"controllers": {n: c.to_json() for n, c in self.controllers.items()},
            "latest_scores": dict(self.latest_scores)}

  def load_json(self, state: dict) -> None:
    """Restores the controllers of the tasks still in the run (the task set may change)."""
    for name, controller in state.get("controllers", {}).items():
      if name in self.controllers:
        self.controllers[name] = StopAndGo.from_json(controller)
    self.latest_scores = {name: float(score) for name, score
                          in state.get("latest_scores", {}).items() if name in self.controllers}


def loader_length(num_examples: int, batch_size: int) -> int:
  """Batches per epoch of a task: the reference's `len(DataLoader)` with drop_last=False."""
  return max(1, math.ceil(num_examples / batch_size))


def iterations_per_epoch(lengths: Sequence[int], multiplier: float = 1.0) -> int:
  """The reference's `median_num_iter`, which is in fact the largest task's epoch, times
  `train_iter_multiplier` (rounded down, as the official `int(...)`).

  The official also scales by the task table's `num_epoch` over `num_train_epochs` (20 / 20
  for every 12-in-1 task); here an epoch stays one pass of the largest task whatever
  `num_epochs` is, so fewer epochs train fewer iterations.
  """
  if not multiplier > 0:
    raise ValueError(f"config.schedule.train_iter_multiplier={multiplier}; expected > 0")
  return max(1, max(int(length * multiplier) for length in lengths))
