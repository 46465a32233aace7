"""Dynamic Stop-and-Go: the reference's `MultiTaskStopOnPlateau`, as plain checkpointable data.

As the official `train_tasks.py` runs it (checked against its recorded DSG trace). One
controller per task, stepped with the task's validation score (higher is better) each time
the task is evaluated:

1. improvement if `score > best * (1 + threshold)`: `best = score`, `num_bad_epochs = 0`;
   otherwise `num_bad_epochs += 1`;
2. if `cooldown_counter > 0`: decrement it and set `num_bad_epochs = 0`;
3. if `num_bad_epochs > patience`: stop (`in_stop = True`), `cooldown_counter = cooldown`,
   `num_bad_epochs = 0` (this fires again while already stopped);
4. elif stopped and `score < best * (1 - continue_threshold)`: go again, with cooldown.

A stopped task still trains on iterations where `iteration % train_iter_gap == 0`. All
controllers are reset (best = -inf, go) after the epochs in `reset_epochs`.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class DSGConfig:
  threshold: float = 0.001           # relative gain that counts as an improvement (0.1%)
  continue_threshold: float = 0.005  # relative drop below best that restarts a task (0.5%)
  patience: int = 1                  # stop after patience+1 = 2 non-improving evaluations
  cooldown: int = 1
  train_iter_gap: int = 4            # a stopped task trains every 4th iteration
  reset_epochs: tuple[int, ...] = (5, 7)


@dataclasses.dataclass
class StopAndGo:
  """One task's controller. `best = -inf` is the reset value."""
  in_stop: bool = False
  best: float = -math.inf
  num_bad_epochs: int = 0
  cooldown_counter: int = 0
  last_epoch: int = -1

  def step(self, score: float, config: DSGConfig) -> None:
    self.last_epoch += 1
    if score > self.best * (1.0 + config.threshold):   # -inf * 1.001 is -inf
      self.best = float(score)
      self.num_bad_epochs = 0
    else:
      self.num_bad_epochs += 1
    if self.cooldown_counter > 0:
      self.cooldown_counter -= 1
      self.num_bad_epochs = 0
    if self.num_bad_epochs > config.patience:
      self.in_stop = True
      self.cooldown_counter = config.cooldown
      self.num_bad_epochs = 0
    elif self.in_stop and score < self.best * (1.0 - config.continue_threshold):
      self.in_stop = False
      self.cooldown_counter = config.cooldown
      self.num_bad_epochs = 0

  def reset(self) -> None:
    """The reference's `_reset()`: best -inf, counters 0, go. `last_epoch` is kept."""
    self.in_stop = False
    self.best = -math.inf
    self.num_bad_epochs = 0
    self.cooldown_counter = 0

  def trains_at(self, iteration: int, config: DSGConfig) -> bool:
    """Whether the task runs at this global iteration."""
    return (not self.in_stop) or iteration % config.train_iter_gap == 0

  def to_json(self) -> dict:
    return {"in_stop": self.in_stop, "best": None if self.best == -math.inf else self.best,
            "num_bad_epochs": self.num_bad_epochs, "cooldown_counter": self.cooldown_counter,
            "last_epoch": self.last_epoch}

  @classmethod
  def from_json(cls, state: dict) -> "StopAndGo":
    best = state.get("best")
    return cls(in_stop=bool(state["in_stop"]), best=-math.inf if best is None else float(best),
               num_bad_epochs=int(state["num_bad_epochs"]),
               cooldown_counter=int(state["cooldown_counter"]),
               last_epoch=int(state["last_epoch"]))
