"""Training curves per task from a run's `metrics.jsonl`, with Dynamic Stop-and-Go marked.

    path = plot_training(workdir)      # <workdir>/training_curves.png

One panel per task: the training loss (left axis; logarithmic when it spans more than
`LOG_SCALE_SPAN`), the training score and the validation score (right axis, percent). Where DSG
stopped the task the panel is shaded red, from a red dashed line (stop) to a green dashed
line (go again, after a loss of validation score or a scheduled reset).

The stop/go state comes from the trainer's records: every `eval` record carries the task's
controller state right after that evaluation (the exact moment of a decision), and every
`train` record the state during its logging window (which also shows the scheduled resets).
A resumed run appends records for iterations it logged before the preemption; the last
record of a (kind, task, iteration) wins, as it describes the run that went on.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any, Iterable

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from twelve_in_one import paths

DPI = 100
PANEL_SIZE = (500, 330)      # pixels per task panel
HEADER = 70                  # pixels above the panels: title and legend
COLUMNS = 3
LOG_SCALE_SPAN = 50.0
OUTPUT = "training_curves.png"


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl (notes included); errors name the file and line."""
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"{path}: no metrics.jsonl (has the run logged anything yet?)")
  lines = epath.Path(path).read_text().splitlines()
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      # A run killed mid-write leaves a partial last line; anything else is damage.
      if number == len(lines):
        break
      raise ValueError(f"{path}: line {number} is not JSON ({error})") from None
  return records


def task_series(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """Per task: train (iteration, loss, score), eval (iteration, score) and DSG transitions."""
  latest: dict[tuple[str, str, int], dict] = {}
  for record in records:
    kind = record.get("kind")
    if kind in ("train", "eval") and "task" in record and "iteration" in record:
      latest[(kind, record["task"], int(record["iteration"]))] = record
  tasks: dict[str, dict[str, Any]] = {}
  for (kind, task, iteration), record in sorted(latest.items(), key=lambda kv: kv[0][2]):
    series = tasks.setdefault(task, {"train": [], "eval": [], "states": []})
    if kind == "train":
      series["train"].append((iteration, record.get("loss"), record.get("score")))
      if "in_stop" in record:
        series["states"].append((iteration, 0, bool(record["in_stop"])))
    else:
      series["eval"].append((iteration, record.get("score")))
      dsg = record.get("dsg") or {}
      if "in_stop" in dsg:
        series["states"].append((iteration, 1, bool(dsg["in_stop"])))
  for series in tasks.values():
    series["transitions"] = dsg_transitions(series.pop("states"))
  return tasks


def dsg_transitions(states: list[tuple[int, int, bool]]) -> list[tuple[int, str]]:
  """[(iteration, "stop" | "go")] where the stop state changes, in order.

  `states` are (iteration, order, in_stop); at one iteration the train record (order 0) was
  written before the evaluation (order 1) that may change the state.
  """
  transitions, current = [], False
  for iteration, _, in_stop in sorted(states):
    if in_stop != current:
      transitions.append((iteration, "stop" if in_stop else "go"))
      current = in_stop
  return transitions


def stop_intervals(transitions: list[tuple[int, str]], end: int) -> list[tuple[int, int]]:
  """The [stop, go) iteration intervals; a stop without a later go lasts until `end`."""
  intervals, start = [], None
  for iteration, event in transitions:
    if event == "stop" and start is None:
      start = iteration
    elif event == "go" and start is not None:
      intervals.append((start, iteration))
      start = None
  if start is not None:
    intervals.append((start, end))
  return intervals


def _panel(axes, name: str, series: dict[str, Any], end: int) -> None:
  train = [(i, loss, score) for i, loss, score in series["train"] if loss is not None]
  score_axes = axes.twinx()
  if train:
    iterations = [t[0] for t in train]
    losses = np.asarray([t[1] for t in train], np.float64)
    axes.plot(iterations, losses, color="tab:blue", linewidth=1.2)
    finite = losses[np.isfinite(losses) & (losses > 0)]
    if finite.size and finite.max() / finite.min() > LOG_SCALE_SPAN:
      axes.set_yscale("log")
    else:
      axes.ticklabel_format(axis="y", useOffset=False)   # plain numbers, no "+1.386" offset
    scores = [(t[0], t[2]) for t in train if t[2] is not None]
    if scores:
      score_axes.plot(*zip(*[(i, 100 * s) for i, s in scores]), color="tab:gray",
                      linewidth=0.8, linestyle=":")
  evals = [(i, s) for i, s in series["eval"] if s is not None]
  if evals:
    score_axes.plot(*zip(*[(i, 100 * s) for i, s in evals]), color="tab:green", marker="o",
                    markersize=3, linewidth=1.4)
  for start, stop in stop_intervals(series["transitions"], end):
    axes.axvspan(start, stop, color="tab:red", alpha=0.12, linewidth=0)
  for iteration, event in series["transitions"]:
    axes.axvline(iteration, color="tab:red" if event == "stop" else "tab:green",
                 linestyle="--", linewidth=1.0)
  stops = sum(event == "stop" for _, event in series["transitions"])
  axes.set_title(f"{name}" + (f"  (DSG stopped {stops}×)" if stops else ""), fontsize=10)
  axes.set_xlabel("iteration", fontsize=8)
  axes.set_ylabel("loss", color="tab:blue", fontsize=8)
  score_axes.set_ylabel("score %", color="tab:green", fontsize=8)
  axes.tick_params(labelsize=7)
  score_axes.tick_params(labelsize=7)
  axes.set_xlim(0, max(end, 1))


def _legend(figure, top: float) -> None:
  """One legend for every panel, under the title (proxies: a panel may lack some series)."""
  handles = [Line2D([], [], color="tab:blue", linewidth=1.2),
             Line2D([], [], color="tab:gray", linewidth=0.8, linestyle=":"),
             Line2D([], [], color="tab:green", marker="o", markersize=3, linewidth=1.4),
             Patch(color="tab:red", alpha=0.12),
             Line2D([], [], color="tab:red", linestyle="--"),
             Line2D([], [], color="tab:green", linestyle="--")]
  labels = ["train loss", "train score", "val score", "DSG stopped", "DSG stop", "DSG go"]
  figure.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8,
                frameon=False, bbox_to_anchor=(0.5, top))


def plot_training(workdir: str, out_path: str | None = None,
                  tasks: Iterable[str] | None = None) -> str:
  """Draws the curves of every task (or `tasks`) of the run in `workdir`; returns the PNG path.

  `workdir` and `out_path` may be local or `gs://` locations.
  """
  paths.check_bucket(workdir, "plot workdir")
  paths.check_bucket(out_path, "plot output")
  series = task_series(read_metrics(os.path.join(workdir, "metrics.jsonl")))
  if tasks:
    unknown = sorted(set(tasks) - set(series))
    if unknown:
      raise ValueError(f"task(s) {unknown} have no records in {workdir}/metrics.jsonl; it has "
                       f"{sorted(series)}")
    series = {name: series[name] for name in tasks}
  if not series:
    raise ValueError(f"{workdir}/metrics.jsonl has no train or eval records yet")
  end = max(max([i for i, *_ in s["train"]] + [i for i, _ in s["eval"]] + [0])
            for s in series.values())
  columns = min(COLUMNS, len(series))
  rows = math.ceil(len(series) / columns)
  width, height = PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows + HEADER
  figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
  FigureCanvasAgg(figure)
  # Title and legend are placed in pixels from the top, so any number of rows fits.
  shown = paths.describe(workdir)
  figure.suptitle(f"training curves: {shown}", fontsize=11,
                  y=1 - 6 / height, va="top")
  _legend(figure, 1 - 30 / height)
  grid = figure.add_gridspec(rows, columns, left=0.07, right=0.93, bottom=0.08 / rows + 0.02,
                             top=1 - HEADER / height - 0.02, hspace=0.55, wspace=0.45)
  for index, (name, data) in enumerate(series.items()):
    _panel(figure.add_subplot(grid[index // columns, index % columns]), name, data, end)
  out_path = out_path or os.path.join(workdir, OUTPUT)
  # Rendered in memory (a few hundred kB) and written whole: a reader, or a bucket, never
  # holds half a picture, and the workdir may be gs://.
  buffer = io.BytesIO()
  figure.savefig(buffer, dpi=DPI, format="png")
  paths.write_bytes_atomically(out_path, buffer.getvalue())
  return out_path
