"""What a pretraining run writes to metrics.jsonl and TensorBoard (`train.metrics_log`).

Records, one JSON object per line, beside the notes every run writes:

* `{"kind": "train", "step", "epoch", "lr", "examples_per_sec", "loss", "masked_lm_loss",
  "masked_img_loss", "next_sentence_loss", "grad_norm"}`: the means over the last `log_every`
  steps (`masked_img_loss` before `img_weight`; `loss` is the weighted sum trained on);
* `{"kind": "val", "step", "epoch", "examples", "loss", ...}`: the validation pass at the end of
  an epoch, each loss the mean over the split's batches, as `train_concap.py` reports it.

TensorBoard gets the same numbers as `pretrain/<key>` and `pretrain_val/<key>` scalars. The
file handling (process 0 only, gs:// workdirs mirrored and uploaded whole) is `MetricsLog`'s.
"""

from __future__ import annotations

import collections
import time

import numpy as np

from twelve_in_one.train.metrics_log import MetricsLog

TRAIN_KEYS = ("loss", "masked_lm_loss", "masked_img_loss", "next_sentence_loss", "grad_norm")


class PretrainingLog(MetricsLog):
  """`MetricsLog` with the pretraining records (module docstring)."""

  def __init__(self, workdir: str, *, enabled: bool = True, log_every: int = 1,
               sync_seconds: float = 60.0):
    super().__init__(workdir, enabled=enabled, log_every=log_every, sync_seconds=sync_seconds)
    self._steps: dict[str, list[float]] = collections.defaultdict(list)
    self._window_seconds = 0.0
    self._window_examples = 0

  def step(self, step: int, values: dict, seconds: float, examples: int) -> None:
    """One finished step's metrics (host numbers); `seconds` it took on the host."""
    for key in TRAIN_KEYS:
      self._steps[key].append(float(np.asarray(values[key])))
    self._window_seconds += seconds
    self._window_examples += examples

  def end_of_step(self, step: int, epoch: float, lr: float, last: bool = False) -> None:
    """Writes the window every `log_every` steps and at the run's `last` step."""
    if ((step + 1) % self.log_every and not last) or not self._steps:
      return
    record = {"kind": "train", "step": step + 1, "epoch": round(epoch, 4), "lr": lr,
              "examples_per_sec": self._window_examples / max(self._window_seconds, 1e-9),
              **{key: float(np.mean(values)) for key, values in self._steps.items()}}
    self._steps.clear()
    self._window_seconds, self._window_examples = 0.0, 0
    if not self.enabled:
      return
    self._write(record)
    for key in (*TRAIN_KEYS, "lr", "examples_per_sec"):
      self._writer.add_scalar(f"pretrain/{key}", record[key], step + 1)
    if time.monotonic() - self._synced_at >= self._sync_seconds:
      self.sync()

  def validation(self, step: int, epoch: int, result: dict) -> None:
    """The end-of-epoch validation losses (`result`: losses and `examples`)."""
    if not self.enabled:
      return
    self._write({"kind": "val", "step": step + 1, "epoch": epoch, **result})
    for key, value in result.items():
      if key != "examples":
        self._writer.add_scalar(f"pretrain_val/{key}", value, step + 1)
    self.sync()
