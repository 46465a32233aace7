"""NLVR2 annotations (TASK12), as read by the official ``nlvr2_dataset.py``.

``<split>.json`` is JSON-lines (despite the name) with ``identifier``,
``sentence`` and ``label`` ("True"/"False"). The two images of an example are
keyed ``<identifier minus its last field>-img0`` / ``-img1`` in the feature
LMDB; the target is 2-way with index 1 = True.
"""

from __future__ import annotations

import os
from typing import Any

from twelve_in_one.data.annotations.common import (
    AnnotationSplit,
    PathLike,
    check_split,
    read_jsonl,
    require_fields,
    require_nonempty,
)
from twelve_in_one.data.errors import DataError, SkipReport

# "test" is the official split name; the public release calls the file test1.
NLVR2_SPLITS = ("train", "dev", "test", "test1")
LABEL_OF_STRING = {"False": 0, "True": 1}


def image_keys(identifier: str) -> tuple[str, str]:
  """The feature keys of an example's two images, from its identifier."""
  stem = "-".join(identifier.split("-")[:-1])
  return f"{stem}-img0", f"{stem}-img1"


def load_nlvr2(dataroot: PathLike, split: str) -> AnnotationSplit:
  """Read ``<dataroot>/<split>.json``.

  Returns:
    Entries ``{question_id (line order), identifier, image_id_0,
    image_id_1, sentence, answer: {labels: [0|1], scores: [1.0]}}``.

  Raises:
    DataError: a malformed line, a label other than "True"/"False" (the
      official code would silently read it as True), or an empty split.
  """
  check_split(split, NLVR2_SPLITS, "NLVR2")
  path = os.path.join(dataroot, f"{split}.json")
  entries: list[dict[str, Any]] = []
  for line, record in read_jsonl(path, "one NLVR2 example object per line"):
    require_fields(record, ("identifier", "sentence", "label"), path, f"line {line}")
    label = str(record["label"])
    if label not in LABEL_OF_STRING:
      raise DataError.at(path, f"line {line} ({record['identifier']})",
                         f"label {record['label']!r}", "'True' or 'False'")
    image_id_0, image_id_1 = image_keys(str(record["identifier"]))
    entries.append({
        "question_id": len(entries),
        "identifier": record["identifier"],
        "image_id_0": image_id_0,
        "image_id_1": image_id_1,
        "sentence": str(record["sentence"]),
        "answer": {"labels": [LABEL_OF_STRING[label]], "scores": [1.0]},
    })
  require_nonempty(entries, path, split)
  return AnnotationSplit(entries, SkipReport(), path, split)
