"""GuessWhat?! pointing annotations (TASK17), as read by ``guesswhat_pointing_dataset.py``.

Files under ``dataroot``:

* ``guesswhat.{train,valid,test}.jsonl``: one game per line, ``{id, image:
  {id, ...}, qas: [{id, question, answer}], objects: [{id, ...}], object_id,
  ...}``;
* ``cache/image_bbox_list.pkl``: image id -> ``{"bboxes": [object ids]}``,
  the objects whose features the GT LMDB stores (sorted unique by id);
* ``cache/bboxes_dict.pkl``: object id -> ``[x1, y1, x2, y2]``.

The text is the whole dialogue, ``"start <q> answer <a> stop "`` per turn.
``mc_idx`` are the positions of the game's candidate objects (sorted by id)
in the image's sorted object list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twelve_in_one.data.annotations.common import (
    AnnotationSplit,
    PathLike,
    check_split,
    drop_clean_ids,
    read_jsonl,
    read_pickle,
    require_fields,
    require_nonempty,
)
from twelve_in_one.data.errors import DataError, SkipReport

GUESSWHAT_SPLITS = ("train", "valid", "test")


def dialogue_text(questions: list[str], answers: list[str]) -> str:
  """The official dialogue string: ``"start <q> answer <a> stop "`` per turn."""
  return "".join(f"start {question} answer {answer} stop "
                 for question, answer in zip(questions, answers, strict=True))


def load_guesswhat(dataroot: PathLike, split: str, *,
                   clean_image_ids: frozenset[int] | None = None) -> AnnotationSplit:
  """Read one GuessWhat?! pointing split.

  Args:
    dataroot: the GuessWhat folder (holds the jsonl files and ``cache/``).
    split: train, valid or test.
    clean_image_ids: COCO test image ids dropped from train.

  Returns:
    Entries ``{questions, answers, dialogue, dialog_id, image_id, ref_box,
    ref_id, candidate_object_ids, mc_idx}``, one per game.

  Raises:
    DataError: a malformed line, an image or object missing from the cache
      pickles, or an empty split.
  """
  check_split(split, GUESSWHAT_SPLITS, "GuessWhat")
  path = os.path.join(dataroot, f"guesswhat.{split}.jsonl")
  image_list_path = os.path.join(dataroot, "cache", "image_bbox_list.pkl")
  boxes_path = os.path.join(dataroot, "cache", "bboxes_dict.pkl")
  objects_of_image = read_pickle(image_list_path, "a dict image id -> {'bboxes': [ids]}")
  box_of_object = read_pickle(boxes_path, "a dict object id -> [x1, y1, x2, y2]")
  for loaded, loaded_path in ((objects_of_image, image_list_path), (box_of_object, boxes_path)):
    if not isinstance(loaded, Mapping):
      raise DataError.at(loaded_path, "file", f"holds a {type(loaded).__name__}",
                         "a pickled dict")
  # The image's object list is sorted once per image, not once per game.
  sorted_objects: dict[Any, dict[Any, int]] = {}
  entries: list[dict[str, Any]] = []
  for line, game in read_jsonl(path, "one GuessWhat game object per line"):
    where = f"line {line}"
    require_fields(game, ("id", "image", "qas", "objects", "object_id"), path, where)
    require_fields(game["image"], ("id",), path, f"{where} image")
    image_id = game["image"]["id"]
    if image_id not in objects_of_image:
      raise DataError.at(image_list_path, f"image id {image_id!r}", f"missing (needed by "
                         f"{path} {where})", "every game's image in image_bbox_list.pkl")
    if image_id not in sorted_objects:
      require_fields(objects_of_image[image_id], ("bboxes",), image_list_path,
                     f"image id {image_id!r}")
      sorted_objects[image_id] = {object_id: position for position, object_id in
                                  enumerate(sorted(set(objects_of_image[image_id]["bboxes"])))}
    position_of = sorted_objects[image_id]
    candidate_ids = sorted(game_object["id"] for game_object in game["objects"])
    unknown = [object_id for object_id in candidate_ids if object_id not in position_of]
    if unknown:
      raise DataError.at(path, where, f"objects {unknown} are not in image {image_id}'s "
                         f"list in {image_list_path}", "every game object listed there")
    if game["object_id"] not in box_of_object:
      raise DataError.at(boxes_path, f"object id {game['object_id']!r}",
                         f"missing (target of {path} {where})",
                         "every target object in bboxes_dict.pkl")
    for qa_index, qa in enumerate(game["qas"]):
      require_fields(qa, ("question", "answer"), path, f"{where} qas[{qa_index}]")
    questions = [qa["question"] for qa in game["qas"]]
    answers = [qa["answer"] for qa in game["qas"]]
    entries.append({
        "questions": questions,
        "answers": answers,
        "dialogue": dialogue_text(questions, answers),
        "dialog_id": game["id"],
        "image_id": image_id,
        "ref_box": [float(value) for value in box_of_object[game["object_id"]]],
        "ref_id": game["object_id"],
        "candidate_object_ids": candidate_ids,
        "mc_idx": [position_of[object_id] for object_id in candidate_ids],
    })
  skipped = SkipReport()
  if split == "train":
    entries = drop_clean_ids(entries, clean_image_ids, skipped)
  require_nonempty(entries, path, split)
  return AnnotationSplit(entries, skipped, path, split)
