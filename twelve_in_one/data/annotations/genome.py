"""Visual Genome QA annotations (TASK2), as read by the official ``visual_genome_dataset.py``.

The official reader uses ``cache/trainval_target.pkl`` under ``dataroot``: a
list of ``{question_id, image_id, question, labels, scores}`` in the **VQA
3129-answer label space** (vocabulary ``cache/trainval_ans2label.pkl``).
Sorted by question_id, ``train`` is all but the last 5000 and ``val`` the
last 5000. The clean filter (VG test ids) applies to both splits.

:func:`load_genome_raw` parses the raw Visual Genome ``question_answers.json``
(a list of ``{id, qas: [{qa_id, image_id, question, answer, ...}]}``), from
which such a cache is built.
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

GENOME_SPLITS = ("train", "val")
VAL_SIZE = 5000


def load_genome_answer_vocab(dataroot: PathLike) -> AnswerVocab:
  """Load the (VQA) answer vocabulary from ``cache/`` under the VG folder."""
  cache = os.path.join(dataroot, "cache")
  return load_answer_vocab(os.path.join(cache, "trainval_ans2label.pkl"),
                           os.path.join(cache, "trainval_label2ans.pkl"))


def load_genome(dataroot: PathLike, split: str, *,
                clean_image_ids: frozenset[int] | None = None,
                answer_vocab: AnswerVocab | None = None) -> AnnotationSplit:
  """Read one VG-QA split from ``cache/trainval_target.pkl`` under ``dataroot``.

  Args:
    dataroot: the Visual Genome folder.
    split: ``"train"`` or ``"val"``.
    clean_image_ids: VG test image ids to drop (both splits, as official).
    answer_vocab: the answer vocabulary; by default read from ``cache/``.

  Returns:
    Entries ``{question_id, image_id, question, answer: {labels, scores}}``.
  """
  check_split(split, GENOME_SPLITS, "VG-QA")
  vocab = answer_vocab or load_genome_answer_vocab(dataroot)
  path = os.path.join(dataroot, "cache", "trainval_target.pkl")
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
    check_scores(item["labels"], item["scores"], path, row(index))
  check_questions(items, path, row)
  items = sorted(items, key=lambda item: item["question_id"])
  items = items[:-VAL_SIZE] if split == "train" else items[-VAL_SIZE:]
  entries = [{
      "question_id": item["question_id"],
      "image_id": item["image_id"],
      "question": item["question"],
      "answer": check_answer({"labels": item["labels"], "scores": item["scores"]},
                             vocab.num_labels, path, f"question_id {item['question_id']}"),
  } for item in items]
  skipped = SkipReport()
  entries = drop_clean_ids(entries, clean_image_ids, skipped)
  require_nonempty(entries, path, split)
  return AnnotationSplit(entries, skipped, path, split)


def load_genome_raw(path: PathLike) -> AnnotationSplit:
  """Parse a raw Visual Genome ``question_answers.json``.

  Returns:
    Entries ``{question_id: qa_id, image_id, question, answer}`` (the raw
    answer string), sorted by question_id like the official splits.
  """
  path = os.fspath(path)
  images = read_json(path, "a list of {id, qas: [...]}")
  if not isinstance(images, list):
    raise DataError.at(path, "top level", f"is a JSON {type(images).__name__}",
                       "a list of {id, qas: [...]} per image")
  entries: list[dict[str, Any]] = []
  qas: list[tuple[dict[str, Any], str]] = []
  for image_index, image in enumerate(images):
    require_fields(image, ("id", "qas"), path, f"image [{image_index}]")
    for qa_index, qa in enumerate(image["qas"]):
      where = f"image id {image['id']} qas[{qa_index}]"
      require_fields(qa, ("qa_id", "question", "answer"), path, where)
      image_id = qa.get("image_id", image["id"])
      if image_id != image["id"]:
        raise DataError.at(path, where, f"image_id {image_id} inside image "
                           f"{image['id']}", "the QA's image_id to match its image")
      entries.append({"question_id": qa["qa_id"], "image_id": image_id,
                      "question": qa["question"], "answer": qa["answer"]})
      qas.append((qa, where))
  check_questions([qa for qa, _ in qas], path, lambda row: qas[row][1], id_field="qa_id")
  entries.sort(key=lambda entry: entry["question_id"])
  require_nonempty(entries, path, "raw")
  return AnnotationSplit(entries, SkipReport(), path, "raw")
