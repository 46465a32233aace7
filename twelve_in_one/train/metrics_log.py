"""What the user sees of a run: metrics.jsonl, TensorBoard events, notes, the final table.

Only process 0 writes (the loop passes `enabled=False` elsewhere). Per task and per logging
window it records loss, score, learning rate, DSG state and examples per second.

In a gs:// workdir the log cannot be appended to in place: a Cloud Storage object is written
whole (opening one for append silently replaces it). So metrics.jsonl and the TensorBoard
event files are written to a local mirror, which starts from the bucket's metrics.jsonl when a
run resumes, and are uploaded whole at most every `sync_seconds`, after each evaluation and at
the end. A preempted run loses at most that window of training metrics, never the file.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import tqdm

from twelve_in_one import paths
from twelve_in_one.tasks.registry import Task

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
  """Accumulates per-task training metrics and writes them every `log_every` iterations."""

  def __init__(self, workdir: str, *, enabled: bool = True, log_every: int = 1,
               sync_seconds: float = 60.0):
    self.enabled = enabled
    self.log_every = log_every
    self._window: dict[str, dict[str, list]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    self._examples = collections.Counter()
    self._seconds = collections.Counter()
    self._file = None
    self._writer = None
    self._workdir = paths.as_path(workdir)
    self._mirror: str | None = None     # the local folder of a remote workdir's logs
    self._sync_seconds = sync_seconds
    self._synced_at = time.monotonic()
    if enabled:
      folder = os.fspath(self._workdir)
      if paths.is_remote(self._workdir):
        self._mirror = folder = tempfile.mkdtemp(prefix="twelve_in_one-logs-")
        remote = self._workdir / METRICS_FILE
        paths.forget_cached_listings(self._workdir)   # another process may have rewritten it
        if remote.exists():   # a resumed run continues the bucket's file
          paths.copy_file(remote, paths.as_path(os.path.join(folder, METRICS_FILE)))
      self._file = open(os.path.join(folder, METRICS_FILE), "a", encoding="utf-8")
      from tensorboardX import SummaryWriter   # event files without TensorFlow
      self._writer = SummaryWriter(os.path.join(folder, TENSORBOARD_DIR))

  def note(self, text: str) -> None:
    """A progress message: printed (above the progress bar) and kept in metrics.jsonl."""
    logging.info("%s", text)
    if self.enabled:
      tqdm.tqdm.write(text)
      self._write({"note": text, "time": time.time()})

  def accumulate(self, task: str, started: float, examples: int) -> None:
    self._seconds[task] += time.perf_counter() - started
    self._examples[task] += examples

  def train_step(self, iteration: int, task: str, values: dict) -> None:
    for key, value in values.items():
      self._window[task][key].append(float(np.asarray(value)))

  def train_iteration(self, iteration: int, lr: float, schedule, last: bool = False) -> None:
    """Writes the window every `log_every` iterations, and at the run's `last` iteration."""
    if ((iteration + 1) % self.log_every and not last) or not self.enabled:
      return
    for task, window in self._window.items():
      # `updates`: the task's steps in this window (fewer than `log_every` while DSG stops it).
      record = {"iteration": iteration + 1, "task": task, "kind": "train", "lr": lr,
                "updates": len(next(iter(window.values()), [])),
                "in_stop": schedule.controllers[task].in_stop,
                "examples_per_sec": self._examples[task] / max(self._seconds[task], 1e-9)}
      record.update({k: float(np.mean(v)) for k, v in window.items()})
      self._write(record)
      for key in ("loss", "score", "examples_per_sec", "lr"):
        self._writer.add_scalar(f"train/{task}/{key}", record[key], iteration + 1)
      self._writer.add_scalar(f"dsg/{task}/in_stop", float(record["in_stop"]), iteration + 1)
    self._window.clear()
    self._examples.clear()
    self._seconds.clear()
    if time.monotonic() - self._synced_at >= self._sync_seconds:
      self.sync()

  def eval(self, iteration: int, task: str, result: dict, controller: dict) -> None:
    if not self.enabled:
      return
    self._write({"iteration": iteration + 1, "task": task, "kind": "eval", **result,
                 "dsg": controller})
    self._writer.add_scalar(f"eval/{task}/score", result["score"], iteration + 1)
    self._writer.add_scalar(f"eval/{task}/loss", result["loss"], iteration + 1)
    self.sync()

  def _write(self, record: dict[str, Any]) -> None:
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def sync(self) -> None:
    """Uploads the local mirror of a remote workdir's logs (whole files); no-op when local."""
    self._synced_at = time.monotonic()
    if self._mirror is None or self._file is None:
      return
    self._writer.flush()
    paths.copy_tree(self._mirror, self._workdir)

  def close(self) -> None:
    if self._file:
      self._file.close()
      self._writer.close()
      if self._mirror is not None:
        paths.copy_tree(self._mirror, self._workdir)
        shutil.rmtree(self._mirror, ignore_errors=True)
      self._file = self._writer = None


def results_table(workdir: str, tasks: list[Task], results: dict[str, dict],
                  chance: dict[str, float] | None = None) -> str:
  """Writes results.json and results.md (task, metric, chance, score); returns the Markdown."""
  chance = chance or {}
  rows = ["| task | metric | chance | score | val examples |", "|---|---|---|---|---|"]
  for task in tasks:
    result = results.get(task.name, {})
    score = result.get("score")
    rows.append(f"| {task.name} | {task.metric} | "
                f"{'' if task.name not in chance else f'{100 * chance[task.name]:.1f}'} | "
                f"{'' if score is None else f'{100 * score:.2f}'} | "
                f"{result.get('examples', '')} |")
  table = "\n".join(rows) + "\n"
  root = paths.as_path(workdir)
  paths.write_text_atomically(root / "results.md", table)
  paths.write_text_atomically(root / "results.json", json.dumps(
      {t.name: dict(results.get(t.name, {}), metric=t.metric, chance=chance.get(t.name))
       for t in tasks}, indent=1))
  print(table)
  return table

