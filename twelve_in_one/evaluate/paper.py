"""The paper's numbers (Lu et al., CVPR 2020, Table 2) beside ours, as Markdown and JSON.

Each task's numbers are its registry entry's `paper` field (`registry.PaperResult`), each with
a provenance tag, because most of them were recalled rather than re-read from the paper:

* `3p`: confirmed by a secondary source (a Papers-with-Code mirror); shown with ✓.
* `R`: recalled from the paper, not re-read against its text; shown with *.

As of those notes no cell of the AT (one model) column is confirmed; the confirmed cells are
five AT→FT ones (VQA test-dev, Flickr30k IR R@1, RefCOCOg, NLVR2 test-P, SNLI-VE). Columns:
ST = 12 single-task models, AT = the one multi-task model (the fair bar for this port), AT→FT =
the multi-task model fine-tuned per task. All are percentages.
"""

from __future__ import annotations

from typing import Any, Mapping

from twelve_in_one.tasks.registry import TWELVE_TASKS, PaperResult, TaskTable

CONFIRMED_TAGS = ("3p", "code")

# Task name -> the paper's numbers, for every registered task the paper reports.
PAPER: Mapping[str, PaperResult] = TaskTable(lambda task: task.paper)
# The 12-task means of the recalled cells, for the table's last row.
PAPER_AVERAGE = {"st": 67.25, "at": 69.08, "at_ft": 70.25}


def _cell(value: tuple[float, str]) -> str:
  number, tag = value
  return f"{number:.2f} {'✓' if tag in CONFIRMED_TAGS else '*'}"


def headline(task_result: Mapping[str, Any]) -> float | None:
  """The number of a split result that the paper reports (percent), or None."""
  retrieval = task_result.get("retrieval")
  if retrieval is not None:
    return retrieval["image_retrieval"]["R@1"]
  score = task_result.get("score")
  return None if score is None else 100.0 * score


def _ours(task: str, splits: Mapping[str, Mapping[str, Any]]) -> tuple[str, float | None]:
  """The table cell of our splits (paper split first) and our number on the paper split."""
  row = PAPER.get(task)
  ordered = sorted(splits, key=lambda s: (row is None or s != row.our_split, s))
  parts = []
  for split in ordered:
    value = headline(splits[split])
    shown = "server" if value is None else f"{value:.2f}"
    parts.append(f"{split} {shown}")
  paper_split = None if row is None or row.our_split not in splits else headline(
      splits[row.our_split])
  return " · ".join(parts), paper_split


def paper_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]]
                ) -> tuple[str, dict[str, Any]]:
  """(Markdown, JSON-able dict) of the paper's numbers beside `results[task][split]`."""
  lines = ["| task | metric | paper split | ST | AT (one model) | AT→FT | ours |",
           "|---|---|---|---|---|---|---|"]
  data: dict[str, Any] = {"tasks": {}, "legend": {
      "✓": "confirmed by a secondary source (tag [3p])",
      "*": "recalled from the paper, not re-read (tag [R]); provisional",
      "server": "no ground truth locally; submit the file in submissions/"}}
  for task, splits in results.items():
    row = PAPER.get(task)
    ours_cell, ours_value = _ours(task, splits)
    if row is None:
      lines.append(f"| {task} | | | | | | {ours_cell} |")
      data["tasks"][task] = {"ours": {s: headline(r) for s, r in splits.items()}}
      continue
    lines.append(f"| {task} | {row.metric} | {row.split} | {_cell(row.st)} | {_cell(row.at)} | "
                 f"{_cell(row.at_ft)} | {ours_cell} |")
    data["tasks"][task] = {
        "metric": row.metric, "paper_split": row.split, "our_split": row.our_split,
        "paper": {name: {"value": value[0], "source": value[1],
                         "confirmed": value[1] in CONFIRMED_TAGS}
                  for name, value in (("ST", row.st), ("AT", row.at), ("AT_FT", row.at_ft))},
        "ours": {s: headline(r) for s, r in splits.items()},
        "ours_on_paper_split": ours_value, "note": row.note}
  if set(results) >= set(TWELVE_TASKS):
    values = [data["tasks"][t]["ours_on_paper_split"] for t in TWELVE_TASKS]
    mean = (f"{sum(values) / len(values):.2f}" if all(v is not None for v in values)
            else "(needs server scores)")
    lines.append(f"| **12-task average** | | | {PAPER_AVERAGE['st']:.2f} * | "
                 f"{PAPER_AVERAGE['at']:.2f} * | {PAPER_AVERAGE['at_ft']:.2f} * | {mean} |")
  lines += ["", "✓ confirmed by a secondary source; * recalled from the paper, provisional"
            ". ST: 12 single-task models; AT: one multi-task model; AT→FT: "
            "fine-tuned per task. ours: every split evaluated, the paper's first; 'server': no "
            "local ground truth (see submissions/)."]
  return "\n".join(lines) + "\n", data
