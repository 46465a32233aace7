"""The learning-rate multiplier of the official loop, stepped where `train_tasks.py` steps it.

The official loop drives two torch schedulers on one optimizer and each of them *sets* the
group learning rates (they do not compose by multiplication):

* a warm-up scheduler: `WarmupLinearSchedule` for `lr_scheduler="warmup_linear"`, else
  `WarmupConstantSchedule`, both over `warmup_steps = warmup_proportion * total_steps`. It is
  stepped after the optimizer step of the *first* task forwarded in an iteration (so that task
  runs at lambda(i) and every later task of the iteration at lambda(i+1)), and then only while
  `global_step < warmup_steps` unless it is `warmup_linear`. `global_step` counts the
  iterations in which some task was forwarded.
* `lr_scheduler`: `mannul` (the official default) a `LambdaLR` of 0.2 ** (number of
  `reduce_epochs` <= epoch), stepped after every epoch; `automatic` a `ReduceLROnPlateau`
  (max, factor 0.2, patience 1, cooldown 1, threshold 1e-3 relative) on the summed validation
  score, after every epoch; `cosine` (`CosineAnnealingLR`) and `cosine_warm`
  (`CosineAnnealingWarmRestarts`) with a period of all the run's iterations, stepped after
  every iteration once `global_step > warmup_steps`; `warmup_linear` has none.

Constructing the second scheduler resets the rates to their base for `mannul`, `cosine` and
`cosine_warm` (`cosine` as in torch 1.x, which the official code ran on; torch >= 2 keeps the
warm-up's rate there), so the run's very first update uses the full learning rate; `mannul`'s
epoch steps likewise set it back to the base during a warm-up longer than an epoch (the first
update of the next epoch then runs at the base rate). These are the official dynamics and are
kept. (The official `automatic` branch reads an undefined `val_scores` and stops; here it
reduces on the sum of each task's latest validation score.)

All state is plain JSON (checkpointed with the host state), so a resumed run continues the same
sequence of multipliers.
"""

from __future__ import annotations

import dataclasses
import math

SCHEDULERS = ("warmup_linear", "mannul", "automatic", "cosine", "cosine_warm")
# ReduceLROnPlateau as `train_tasks.py` builds it (min_lr 0 and eps 1e-8 are torch's defaults).
PLATEAU_FACTOR, PLATEAU_PATIENCE, PLATEAU_COOLDOWN, PLATEAU_THRESHOLD = 0.2, 1, 1, 0.001
PLATEAU_EPS = 1e-8
MANNUL_FACTOR = 0.2


def warmup_linear(step: int, warmup_steps: float, total_steps: float) -> float:
  """`WarmupLinearSchedule`'s multiplier after `step` scheduler steps: step/warmup during the
  warm-up (0 at step 0), then a linear decay to 0 at `total_steps`."""
  if step < warmup_steps:
    return float(step) / float(max(1.0, warmup_steps))
  return max(0.0, float(total_steps - step) / float(max(1.0, total_steps - warmup_steps)))


def warmup_constant(step: int, warmup_steps: float) -> float:
  """`WarmupConstantSchedule`'s multiplier: step/warmup during the warm-up, then 1."""
  if step < warmup_steps:
    return float(step) / float(max(1.0, warmup_steps))
  return 1.0


def check_scheduler(kind: str) -> None:
  if kind not in SCHEDULERS:
    raise ValueError(f"config.schedule.lr_scheduler={kind!r}; expected one of {SCHEDULERS}")


@dataclasses.dataclass
class LearningRateSchedule:
  """The multiplier of every group's base learning rate (torch's `lr / initial_lr`)."""
  kind: str
  warmup_steps: float
  total_steps: int                       # num_train_optimization_steps
  reduce_epochs: tuple[int, ...] = (5, 7)
  base_lr: float = 2e-5                  # group 0's, for ReduceLROnPlateau's eps test
  # state
  multiplier: float = dataclasses.field(default=float("nan"))
  global_step: int = 0
  warmup_epoch: int = 0
  cosine_epoch: int = 0
  plateau_best: float = -math.inf
  plateau_bad_epochs: int = 0
  plateau_cooldown: int = 0

  def __post_init__(self):
    check_scheduler(self.kind)
    if math.isnan(self.multiplier):
      # The warm-up scheduler's construction sets lambda(0); the second scheduler's, for
      # mannul and the cosines, sets the base rate again (LambdaLR(0) = 1, cosine at 0 = 1).
      self.multiplier = self._warmup(0)
      if self.kind in ("mannul", "cosine", "cosine_warm"):
        self.multiplier = 1.0

  def _warmup(self, step: int) -> float:
    if self.kind == "warmup_linear":
      return warmup_linear(step, self.warmup_steps, self.total_steps)
    return warmup_constant(step, self.warmup_steps)

  def after_step(self, first_task: bool) -> None:
    """After a task's optimizer step; `first_task`: the first one forwarded this iteration."""
    if not first_task:
      return
    if self.global_step < self.warmup_steps or self.kind == "warmup_linear":
      self.warmup_epoch += 1
      self.multiplier = self._warmup(self.warmup_epoch)
    self.global_step += 1

  def end_of_iteration(self) -> None:
    """After every task of an iteration: the cosine schedulers step once warmed up."""
    if not self.kind.startswith("cosine") or not self.global_step > self.warmup_steps:
      return
    period = self.total_steps
    self.cosine_epoch += 1
    epoch = self.cosine_epoch
    if self.kind == "cosine_warm":
      # T_cur wraps at T_0 (T_mult 1); the value is computed from the base rate.
      self.multiplier = (1.0 + math.cos(math.pi * (epoch % period) / period)) / 2.0
    elif (epoch - 1 - period) % (2 * period) == 0:
      self.multiplier += (1.0 - math.cos(math.pi / period)) / 2.0
    else:
      # CosineAnnealingLR's recursive form (eta_min 0), applied to the current rate.
      self.multiplier *= ((1.0 + math.cos(math.pi * epoch / period))
                          / (1.0 + math.cos(math.pi * (epoch - 1) / period)))

  def end_of_epoch(self, epoch: int, summed_score: float | None) -> None:
    """After epoch `epoch` (0-based) ends; `summed_score` is for `automatic`."""
    if self.kind == "mannul":
      count = sum(1 for e in self.reduce_epochs if e <= epoch + 1)
      self.multiplier = MANNUL_FACTOR ** count
    elif self.kind == "automatic" and summed_score is not None:
      self._plateau(summed_score)

  def _plateau(self, score: float) -> None:
    if score > self.plateau_best * (1.0 + PLATEAU_THRESHOLD):
      self.plateau_best, self.plateau_bad_epochs = float(score), 0
    else:
      self.plateau_bad_epochs += 1
    if self.plateau_cooldown > 0:
      self.plateau_cooldown -= 1
      self.plateau_bad_epochs = 0
    if self.plateau_bad_epochs > PLATEAU_PATIENCE:
      old = self.base_lr * self.multiplier
      if old - old * PLATEAU_FACTOR > PLATEAU_EPS:
        self.multiplier *= PLATEAU_FACTOR
      self.plateau_cooldown, self.plateau_bad_epochs = PLATEAU_COOLDOWN, 0

  def to_json(self) -> dict:
    return {"kind": self.kind, "multiplier": self.multiplier, "global_step": self.global_step,
            "warmup_epoch": self.warmup_epoch, "cosine_epoch": self.cosine_epoch,
            "plateau_best": None if self.plateau_best == -math.inf else self.plateau_best,
            "plateau_bad_epochs": self.plateau_bad_epochs,
            "plateau_cooldown": self.plateau_cooldown}

  def load_json(self, state: dict) -> None:
    """Restores the state a checkpoint saved; a changed `lr_scheduler` is an error."""
    if state.get("kind", self.kind) != self.kind:
      raise ValueError(f"config.schedule.lr_scheduler={self.kind!r}, but the checkpoint was "
                       f"trained with {state['kind']!r}; resume with the same scheduler")
    best = state.get("plateau_best")
    self.multiplier = float(state["multiplier"])
    self.global_step = int(state["global_step"])
    self.warmup_epoch = int(state["warmup_epoch"])
    self.cosine_epoch = int(state["cosine_epoch"])
    self.plateau_best = -math.inf if best is None else float(best)
    self.plateau_bad_epochs = int(state["plateau_bad_epochs"])
    self.plateau_cooldown = int(state["plateau_cooldown"])
