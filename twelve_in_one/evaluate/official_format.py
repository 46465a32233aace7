"""Prediction files in the shape the official `eval_tasks.py` / `eval_retrieval.py` write.

Users' existing scripts read the official files, so every evaluated split also gets them,
beside our own per-item predictions (`predictions/<task>_<split>.json`):

    <out_dir>/official/<task>/<split>_result.json
    <out_dir>/official/<task>/<split>_others.json

The official scripts write `<save_path>/<split>_result.json` for each task into one folder, so
two tasks evaluated on a split of the same name overwrite each other; the folder per task
avoids that. The entries, by head type, are the official ones:

| head type | one entry per example |
|---|---|
| VL-classifier (VQA, VG-QA) | `{"question_id": int, "answer": str}` |
| VL-classifier-GQA | `{"questionId": str, "prediction": str}` |
| V-logit (RefCOCO, RefCOCO+, RefCOCOg) | `{"id": int, "target": region index, "IOU": float}` (the IoU target at the chosen region, 0 below 0.5) |
| V-logit-mc (Visual7W, GuessWhat) | `{"id": int, "target": candidate index}` |
| VL-logit (retrieval) | the 20 best image indices of the caption, a list (`eval_retrieval.py`) |
| VL-binary / VL-tri-classifier (NLVR2, SNLI-VE) | none: the official list stays empty |

`_others.json` is the official `others` list, which no official task fills: `[]`. A classifier
evaluated without an answer vocabulary (synthetic data) writes the label number as the answer.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from twelve_in_one.tasks.registry import Task

# Images listed per caption by the official retrieval evaluation.
RETRIEVAL_TOP = 20


def _vqa(record: Mapping[str, Any]) -> dict[str, Any]:
  return {"question_id": int(record["question_id"]),
          "answer": str(record.get("answer", record["label"]))}


def _gqa(record: Mapping[str, Any]) -> dict[str, Any]:
  return {"questionId": str(record["question_id"]),
          "prediction": str(record.get("answer", record["label"]))}


def _grounding(record: Mapping[str, Any]) -> dict[str, Any]:
  return {"id": int(record["id"]), "target": int(record["region"]), "IOU": float(record["iou"])}


def _multiple_choice(record: Mapping[str, Any]) -> dict[str, Any]:
  return {"id": int(record["id"]), "target": int(record["choice"])}


_ENTRY: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "VL-classifier": _vqa, "VL-classifier-GQA": _gqa, "V-logit": _grounding,
    "V-logit-mc": _multiple_choice}
_NO_ENTRIES = ("VL-binary-classifier", "VL-tri-classifier")


def official_results(task: Task, records: Sequence[Mapping[str, Any]],
                     scores: np.ndarray | None = None) -> list[Any]:
  """The official `results` list of one task and split.

  Args:
    task: the evaluated task.
    records: our per-item records (`evaluate.scoring.item_records`; ranking records for
      retrieval).
    scores: retrieval only: the [captions, images] score matrix, rows in `records`' order.
  """
  kind = task.head_type
  if kind == "VL-logit":
    if scores is None:
      raise ValueError(f"task {task.name}: the official retrieval results need the score "
                       "matrix")
    if len(scores) != len(records):
      raise ValueError(f"task {task.name}: {len(scores)} score rows for {len(records)} "
                       "captions")
    # A stable sort of the negated scores: equal scores keep image order.
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :RETRIEVAL_TOP]
    return [[int(i) for i in row] for row in order]
  if kind in _NO_ENTRIES:
    return []
  if kind not in _ENTRY:
    raise ValueError(f"task {task.name}: no official result format for head type {kind!r}")
  return [_ENTRY[kind](record) for record in records]


def official_paths(task: Task, split: str, out_dir: str) -> tuple[str, str]:
  """(`<split>_result.json`, `<split>_others.json`) of one task under `out_dir`."""
  folder = os.path.join(out_dir, "official", task.name)
  return (os.path.join(folder, f"{split}_result.json"),
          os.path.join(folder, f"{split}_others.json"))
