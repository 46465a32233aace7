"""GQA annotations (TASK15), as read by the official ``gqa_dataset.py``.

Files under ``dataroot``:

* ``cache/{train,val,trainval}_target.pkl``: a list of ``{question_id,
  image_id, question, labels, scores}``; question ids are cast to int.
* ``cache/trainval_ans2label.pkl`` / ``cache/trainval_label2ans.pkl``: the
  answer vocabulary (the official head has 1533 outputs; copies circulating
  elsewhere, e.g. IGLUE's, have other sizes, so the size is read, not assumed).
* ``testdev_balanced_questions.json``: a dict question id -> ``{imageId,
  question, ...}``, used as the ``test`` split (GQA test-dev).

Splits (sorted by question_id): ``train``, ``val``, ``trainval`` (all of
``trainval_target.pkl`` but the last 3000), ``minval`` (its last 3000),
``test``. Image ids are GQA strings such as ``"2354786"`` or ``"n161313"``.
"""

from __future__ import annotations

import os
from typing import Any

from twelve_in_one.data.annotations.common import (
    AnnotationSplit,
    AnswerVocab,
    PathLike,
    check_answer,
    check_questions,
    check_scores,
    check_split,
    drop_clean_ids,
    load_answer_vocab,
    read_json,
    read_pickle,
    require_fields,
    require_nonempty,
)
from twelve_in_one.data.errors import DataError, SkipReport

GQA_SPLITS = ("train", "val", "trainval", "minval", "test")
MINVAL_SIZE = 3000
TESTDEV_FILE = "testdev_balanced_questions.json"


def load_gqa_answer_vocab(dataroot: PathLike) -> AnswerVocab:
  """Load ``cache/trainval_ans2label.pkl`` and ``cache/trainval_label2ans.pkl``."""
  cache = os.path.join(dataroot, "cache")
  return load_answer_vocab(os.path.join(cache, "trainval_ans2label.pkl"),
                           os.path.join(cache, "trainval_label2ans.pkl"))


def read_testdev_questions(path: PathLike) -> list[dict[str, Any]]:
  """Read a ``testdev_balanced_questions.json`` dict into test entries.

  Returns:
    ``{question_id: int(key), image_id: imageId, question}`` per question,
    in file order (the official code does not sort the test split).
  """
  path = os.fspath(path)
  data = read_json(path, "a dict question id -> {imageId, question, ...}", unique_keys=True)
  if not isinstance(data, dict):
    raise DataError.at(path, "top level", f"is a JSON {type(data).__name__}",
                       "an object mapping question id -> question record")
  entries = []
  for question_id, record in data.items():
    where = f"question {question_id!r}"
    require_fields(record, ("imageId", "question"), path, where)
    entries.append({"question_id": _numeric_id(question_id, path, where),
                    "image_id": record["imageId"], "question": record["question"]})
  keys = list(data)
  # "07" and "7" are one id once cast to int, as the official reader casts them.
  check_questions(entries, path, lambda row: f"question {keys[row]!r}")
  return entries


def _numeric_id(question_id: Any, path: str, where: str) -> int:
  try:
    return int(question_id)
  except (TypeError, ValueError) as error:
    raise DataError.at(path, f"{where}, field 'question_id'", f"{question_id!r} is not an "
                       "integer", "numeric question ids (the official reader casts to int)"
                       ) from error


def load_gqa(dataroot: PathLike, split: str, *,
             clean_image_ids: frozenset[int] | None = None,
             answer_vocab: AnswerVocab | None = None) -> AnnotationSplit:
  """Read one GQA split from the release layout under ``dataroot``.

  Args:
    dataroot: the GQA folder (holds ``cache/`` and the test-dev json).
    split: one of :data:`GQA_SPLITS`.
    clean_image_ids: Visual Genome test image ids dropped from the
      train/trainval splits; None keeps all.
    answer_vocab: the answer vocabulary; by default read from ``cache/``.

  Returns:
    Entries ``{question_id, image_id, question, answer: {labels, scores}}``;
    test entries have no ``answer``.
  """
  check_split(split, GQA_SPLITS, "GQA")
  skipped = SkipReport()
  if split == "test":
    path = os.path.join(dataroot, TESTDEV_FILE)
    entries = read_testdev_questions(path)
    require_nonempty(entries, path, split)
    return AnnotationSplit(entries, skipped, path, split)

  vocab = answer_vocab or load_gqa_answer_vocab(dataroot)
  target_name = split if split in ("train", "val") else "trainval"
  path = os.path.join(dataroot, "cache", f"{target_name}_target.pkl")
  items = read_pickle(path, "a pickled list of {question_id, image_id, question, labels, "
                      "scores}")
  if not isinstance(items, list):
    raise DataError.at(path, "file", f"holds a {type(items).__name__}",
                       "a list of {question_id, image_id, question, labels, scores}")
  def row(index: int) -> str:
    return f"record {index} (question_id {items[index]['question_id']!r})"

  for index, item in enumerate(items):
    require_fields(item, ("question_id", "image_id", "question", "labels", "scores"),
                   path, f"record {index}")
    _numeric_id(item["question_id"], path, row(index))
    check_scores(item["labels"], item["scores"], path, row(index))
  check_questions(items, path, row, id_key=int)
  items = sorted(items, key=lambda item: item["question_id"])
  if split == "trainval":
    items = items[:-MINVAL_SIZE]
  elif split == "minval":
    items = items[-MINVAL_SIZE:]
  entries = []
  for item in items:
    answer = {"labels": item["labels"], "scores": item["scores"]}
    entries.append({
        "question_id": int(item["question_id"]),
        "image_id": item["image_id"],
        "question": item["question"],
        "answer": check_answer(answer, vocab.num_labels, path,
                               f"question_id {item['question_id']}"),
    })
  if "train" in split:
    entries = drop_clean_ids(entries, clean_image_ids, skipped)
  require_nonempty(entries, path, split)
  return AnnotationSplit(entries, skipped, path, split)
