"""SNLI-VE annotations (TASK13), as read by ``visual_entailment_dataset.py``.

``snli_ve_{train,dev,test}.jsonl`` with ``Flikr30kID`` (official misspelling;
``"1234.jpg"`` or ``"1234"``), ``sentence2`` (the hypothesis, the only text
used) and ``gold_label``. Labels: contradiction 0, neutral 1, entailment 2;
``"-"`` (no annotator majority) gives an all-zero target and is counted.
Question ids number the kept examples in file order, after the clean filter
(train only, Flickr30k test ids), as in the official code.
"""

from __future__ import annotations

import os
from typing import Any

from twelve_in_one.data.annotations.common import (
    AnnotationSplit,
    PathLike,
    check_split,
    drop_clean_ids,
    read_jsonl,
    require_fields,
    require_nonempty,
)
from twelve_in_one.data.errors import DataError, SkipReport

SNLI_VE_SPLITS = ("train", "dev", "test")
LABEL_MAP = {"contradiction": 0, "neutral": 1, "entailment": 2}
NO_LABEL = "-"
NO_LABEL_REASON = "gold_label '-' (kept, all-zero target)"


def snli_ve_path(dataroot: PathLike, split: str) -> str:
  """The official file of a split: ``<dataroot>/snli_ve_<split>.jsonl``."""
  return os.path.join(dataroot, f"snli_ve_{split}.jsonl")


def load_snli_ve(dataroot: PathLike, split: str, *,
                 clean_image_ids: frozenset[int] | None = None,
                 path: PathLike | None = None) -> AnnotationSplit:
  """Read one SNLI-VE split.

  Args:
    dataroot: the SNLI-VE folder.
    split: train, dev or test.
    clean_image_ids: Flickr30k test image ids dropped from train.
    path: read this file instead of ``snli_ve_<split>.jsonl``.

  Returns:
    Entries ``{question_id, image_id, hypothesis, answer: {labels, scores}}``.

  Raises:
    DataError: a malformed line, an unknown label, a non-numeric Flickr id,
      or an empty split.
  """
  check_split(split, SNLI_VE_SPLITS, "SNLI-VE")
  path = os.fspath(path) if path is not None else snli_ve_path(dataroot, split)
  skipped = SkipReport()
  entries: list[dict[str, Any]] = []
  for line, record in read_jsonl(path, "one SNLI-VE pair object per line"):
    where = f"line {line}"
    require_fields(record, ("Flikr30kID", "sentence2", "gold_label"), path, where)
    flickr_id = str(record["Flikr30kID"]).split(".")[0]
    if not flickr_id.isdigit():
      raise DataError.at(path, where, f"Flikr30kID {record['Flikr30kID']!r}",
                         "a Flickr30k id like '1234' or '1234.jpg'")
    gold_label = str(record["gold_label"])
    if gold_label == NO_LABEL:
      skipped.add(NO_LABEL_REASON)
      answer: dict[str, list[Any]] = {"labels": [], "scores": []}
    elif gold_label in LABEL_MAP:
      answer = {"labels": [LABEL_MAP[gold_label]], "scores": [1.0]}
    else:
      raise DataError.at(path, where, f"gold_label {gold_label!r}",
                         f"one of {[*LABEL_MAP, NO_LABEL]}")
    entries.append({"image_id": int(flickr_id), "hypothesis": str(record["sentence2"]),
                    "answer": answer})
  if split == "train":
    entries = drop_clean_ids(entries, clean_image_ids, skipped)
  # The official counter only advances for kept examples.
  entries = [{"question_id": question_id, **entry}
             for question_id, entry in enumerate(entries)]
  require_nonempty(entries, path, split)
  return AnnotationSplit(entries, skipped, path, split)
