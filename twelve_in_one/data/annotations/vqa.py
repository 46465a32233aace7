"""VQA v2 annotations (TASK1), as read by the official ``vqa_dataset.py``.

Files under ``dataroot``:

* ``v2_OpenEnded_mscoco_{train,val}2014_questions.json`` and
  ``v2_OpenEnded_mscoco_test2015_questions.json``: ``{"questions": [...]}``
  with question_id, image_id, question.
* ``cache/{train,val}_target.pkl``: a list of ``{question_id, image_id,
  labels, scores}`` soft answer targets.
* ``cache/trainval_ans2label.pkl`` / ``cache/trainval_label2ans.pkl``: the
  3129-answer vocabulary.

Splits (questions and targets sorted by question_id): ``train``, ``val``,
``trainval`` (train + val[:-3000]), ``minval`` (the last 3000 val questions)
and ``test`` (test2015 questions, no answers).

The target pickles are not built by the official repository. They follow the
bottom-up-attention convention (``tools/compute_softscore.py``), which is an
inferred convention: each raw answer string given by the ten annotators is
counted, answers outside the vocabulary are dropped, and a count ``c`` scores
``min(1, 0.3 * c)``, i.e. 0.3/0.6/0.9/1. :func:`targets_from_raw_annotations`
rebuilds them from the raw ``v2_mscoco_*_annotations.json`` format that way.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping
from typing import Any

from twelve_in_one.data.annotations.common import (
    AnnotationSplit,
    AnswerVocab,
    PathLike,
    build_soft_target,
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

VQA_SPLITS = ("train", "val", "trainval", "minval", "test")
# Size of the official minval split carved from the end of val.
MINVAL_SIZE = 3000
# bottom-up-attention get_score(): annotator count -> soft score.
_SCORE_OF_COUNT = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}

__all__ = [
    "MINVAL_SIZE",
    "VQA_SPLITS",
    "build_soft_target",
    "load_vqa",
    "load_vqa_answer_vocab",
    "load_vqa_raw",
    "questions_path",
    "soft_score",
    "targets_from_raw_annotations",
]


def questions_path(dataroot: PathLike, part: str) -> str:
  """Path of the questions json of ``part`` (train, val or test)."""
  year = "2015" if part == "test" else "2014"
  return os.path.join(dataroot, f"v2_OpenEnded_mscoco_{part}{year}_questions.json")


def load_vqa_answer_vocab(dataroot: PathLike) -> AnswerVocab:
  """Load ``cache/trainval_ans2label.pkl`` and ``cache/trainval_label2ans.pkl``."""
  cache = os.path.join(dataroot, "cache")
  return load_answer_vocab(os.path.join(cache, "trainval_ans2label.pkl"),
                           os.path.join(cache, "trainval_label2ans.pkl"))


def soft_score(count: int) -> float:
  """The VQA soft score of an answer given by ``count`` annotators (0.3 per vote, max 1)."""
  return _SCORE_OF_COUNT.get(count, 1.0)


def _read_questions(path: str) -> list[dict[str, Any]]:
  return _read_questions_json(path)[1]


def _read_questions_json(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """The questions json and its questions sorted by question_id."""
  data = read_json(path, "a VQA questions json with a 'questions' list")
  require_fields(data, ("questions",), path, "top level")
  questions = data["questions"]
  for index, question in enumerate(questions):
    require_fields(question, ("question_id", "image_id", "question"), path,
                   f"questions[{index}]")
  check_questions(questions, path,
                  lambda row: f"questions[{row}] (question_id {questions[row]['question_id']})")
  return data, sorted(questions, key=lambda question: question["question_id"])


def _read_targets(path: str) -> list[dict[str, Any]]:
  targets = read_pickle(path, "a pickled list of {question_id, image_id, labels, scores}")
  if not isinstance(targets, list):
    raise DataError.at(path, "file", f"holds a {type(targets).__name__}",
                       "a list of {question_id, image_id, labels, scores}")
  def row(index: int) -> str:
    return f"record {index} (question_id {targets[index]['question_id']})"

  for index, target in enumerate(targets):
    require_fields(target, ("question_id", "image_id", "labels", "scores"), path,
                   f"record {index}")
    check_scores(target["labels"], target["scores"], path, row(index))
  check_questions(targets, path, row, text_field=None)
  return sorted(targets, key=lambda target: target["question_id"])


def _join(questions: list[dict[str, Any]], targets: list[dict[str, Any]], num_labels: int,
          questions_file: str, targets_file: str) -> list[dict[str, Any]]:
  """Pair sorted questions with sorted targets as ``_create_entry`` does."""
  if len(questions) != len(targets):
    raise DataError.at(targets_file, "file", f"has {len(targets)} targets for "
                       f"{len(questions)} questions in {questions_file}",
                       "one target per question")
  entries = []
  for question, target in zip(questions, targets, strict=True):
    where = f"question_id {target['question_id']}"
    if (question["question_id"], question["image_id"]) != (
            target["question_id"], target["image_id"]):
      raise DataError.at(targets_file, where,
                         f"pairs with question {question['question_id']} (image "
                         f"{question['image_id']}) of {questions_file}, image "
                         f"{target['image_id']} here",
                         "the same question ids and image ids in both files")
    answer = {key: value for key, value in target.items()
              if key not in ("question_id", "image_id")}
    entries.append({
        "question_id": question["question_id"],
        "image_id": question["image_id"],
        "question": question["question"],
        "answer": check_answer(answer, num_labels, targets_file, where),
    })
  return entries


def load_vqa(dataroot: PathLike, split: str, *,
             clean_image_ids: frozenset[int] | None = None,
             answer_vocab: AnswerVocab | None = None) -> AnnotationSplit:
  """Read one VQA v2 split from the release layout under ``dataroot``.

  Args:
    dataroot: the VQA folder (holds the questions jsons and ``cache/``).
    split: one of :data:`VQA_SPLITS`.
    clean_image_ids: COCO test image ids to drop from train/trainval
      (see :mod:`~twelve_in_one.data.annotations.clean`); None keeps all.
    answer_vocab: the answer vocabulary; by default read from ``cache/``.

  Returns:
    Entries ``{question_id, image_id, question, answer: {labels, scores}}``;
    test entries have no ``answer``.
  """
  check_split(split, VQA_SPLITS, "VQA")
  skipped = SkipReport()
  if split == "test":
    path = questions_path(dataroot, "test")
    entries = [{key: question[key] for key in ("question_id", "image_id", "question")}
               for question in _read_questions(path)]
    require_nonempty(entries, path, split)
    return AnnotationSplit(entries, skipped, path, split)

  vocab = answer_vocab or load_vqa_answer_vocab(dataroot)

  def part(name: str) -> list[dict[str, Any]]:
    targets_file = os.path.join(dataroot, "cache", f"{name}_target.pkl")
    questions_file = questions_path(dataroot, name)
    return _join(_read_questions(questions_file), _read_targets(targets_file),
                 vocab.num_labels, questions_file, targets_file)

  if split in ("train", "val"):
    entries = part(split)
  elif split == "trainval":
    entries = part("train") + part("val")[:-MINVAL_SIZE]
  else:
    entries = part("val")[-MINVAL_SIZE:]
  if "train" in split:
    entries = drop_clean_ids(entries, clean_image_ids, skipped)
  source = questions_path(dataroot, {"train": "train", "trainval": "train"}.get(split, "val"))
  require_nonempty(entries, source, split)
  return AnnotationSplit(entries, skipped, source, split)


def targets_from_raw_annotations(
    annotations_path: PathLike,
    ans2label: Mapping[str, int],
    questions_file: PathLike | None = None,
) -> tuple[list[dict[str, Any]], SkipReport]:
  """Build ``*_target.pkl``-style records from a raw VQA annotations json.

  Follows bottom-up-attention ``compute_target`` (an inferred convention,
  see the module docstring): per question, count each raw answer string,
  drop answers outside ``ans2label`` (counted in the report), and score a
  count with :func:`soft_score`.

  Args:
    annotations_path: ``{"annotations": [{question_id, answers: [{answer}],
      image_id?}]}``.
    ans2label: the answer vocabulary.
    questions_file: a questions json supplying image ids for annotations
      that lack ``image_id``.

  Returns:
    ``(records {question_id, image_id, labels, scores}, skip report)``.
  """
  annotations_path = os.fspath(annotations_path)
  data = read_json(annotations_path, "a VQA annotations json with an 'annotations' list")
  require_fields(data, ("annotations",), annotations_path, "top level")
  image_of_question: dict[int, Any] = {}
  if questions_file is not None:
    image_of_question = {question["question_id"]: question["image_id"]
                         for question in _read_questions(os.fspath(questions_file))}
  skipped = SkipReport()
  records = []
  annotations = data["annotations"]
  for index, annotation in enumerate(annotations):
    require_fields(annotation, ("question_id", "answers"), annotations_path,
                   f"annotations[{index}]")
  check_questions(annotations, annotations_path,
                  lambda row: f"annotations[{row}] (question_id "
                  f"{annotations[row]['question_id']})", text_field=None)
  for index, annotation in enumerate(annotations):
    where = f"annotations[{index}]"
    question_id = annotation["question_id"]
    image_id = annotation.get("image_id", image_of_question.get(question_id))
    if image_id is None:
      raise DataError.at(annotations_path, f"{where} (question_id {question_id})",
                         "has no image_id and the questions file does not list it",
                         "image_id in the annotation or in questions_file")
    for answer_index, answer in enumerate(annotation["answers"]):
      require_fields(answer, ("answer",), annotations_path,
                     f"{where}.answers[{answer_index}]")
    counts = collections.Counter(answer["answer"] for answer in annotation["answers"])
    labels, scores = [], []
    for answer, count in counts.items():
      if answer not in ans2label:
        skipped.add("answer outside the vocabulary", count)
        continue
      labels.append(ans2label[answer])
      scores.append(soft_score(count))
    records.append({"question_id": question_id, "image_id": image_id,
                    "labels": labels, "scores": scores})
  return records, skipped


def load_vqa_raw(questions_file: PathLike, annotations_file: PathLike,
                 answer_vocab: AnswerVocab) -> AnnotationSplit:
  """Read raw VQA questions + annotations into the same entries as :func:`load_vqa`.

  The soft targets are computed with :func:`targets_from_raw_annotations`;
  the split is named after the questions file's ``data_subtype``.
  """
  questions_file, annotations_file = os.fspath(questions_file), os.fspath(annotations_file)
  records, skipped = targets_from_raw_annotations(annotations_file, answer_vocab.ans2label,
                                                  questions_file)
  questions_json, questions = _read_questions_json(questions_file)
  records.sort(key=lambda record: record["question_id"])
  entries = _join(questions, records, answer_vocab.num_labels, questions_file,
                  annotations_file)
  split = str(questions_json.get("data_subtype", "raw"))
  require_nonempty(entries, questions_file, split)
  return AnnotationSplit(entries, skipped, questions_file, split)
