"""Visual7W pointing annotations (TASK4), as read by ``visual7w_pointing_dataset.py``.

``dataset_v7w_pointing.json`` holds ``boxes`` (``{box_id, x, y, width,
height}``) and ``images`` (``{image_id, split, qa_pairs: [{qa_id, question,
answer: box_id, multiple_choices: [3 box_ids]}]}``). For each image the GT-box
LMDB stores the features of all its QA boxes, sorted and de-duplicated by
box id; ``mc_idx`` gives the positions of a question's four candidate boxes
(sorted by box id) in that list. Features are keyed ``"v7w_<image_id>"``.
"""

from __future__ import annotations

import os
from typing import Any

from twelve_in_one.data.annotations.common import (
    AnnotationSplit,
    PathLike,
    check_split,
    drop_clean_ids,
    read_json,
    require_fields,
    require_nonempty,
)
from twelve_in_one.data.errors import DataError, SkipReport

VISUAL7W_SPLITS = ("train", "val", "test")
ANNOTATION_FILE = "dataset_v7w_pointing.json"


def feature_key(image_id: Any) -> str:
  """The key of a Visual7W image in the feature LMDBs."""
  return f"v7w_{image_id}"


def load_visual7w(dataroot: PathLike, split: str, *,
                  clean_image_ids: frozenset[int] | None = None) -> AnnotationSplit:
  """Read one Visual7W pointing split from ``<dataroot>/dataset_v7w_pointing.json``.

  Args:
    dataroot: the Visual7W folder.
    split: train, val or test.
    clean_image_ids: Visual Genome test image ids dropped from train.

  Returns:
    Entries ``{caption, sent_id, image_id, feature_key, ref_box (xyxy),
    ref_id, mc_idx, gt_box_ids}``, one per QA pair.

  Raises:
    DataError: a QA naming a box id that ``boxes`` lacks, or an empty split.
  """
  check_split(split, VISUAL7W_SPLITS, "Visual7W")
  path = os.path.join(dataroot, ANNOTATION_FILE)
  data = read_json(path, "{boxes: [...], images: [...]}")
  require_fields(data, ("boxes", "images"), path, "top level")
  box_of_id: dict[Any, list[float]] = {}
  for index, box in enumerate(data["boxes"]):
    require_fields(box, ("box_id", "x", "y", "width", "height"), path, f"boxes[{index}]")
    box_of_id[box["box_id"]] = [box["x"], box["y"], box["x"] + box["width"],
                                box["y"] + box["height"]]
  entries: list[dict[str, Any]] = []
  for image_index, image in enumerate(data["images"]):
    require_fields(image, ("image_id", "split", "qa_pairs"), path, f"images[{image_index}]")
    if image["split"] != split:
      continue
    for qa_index, qa in enumerate(image["qa_pairs"]):
      require_fields(qa, ("qa_id", "question", "answer", "multiple_choices"), path,
                     f"image_id {image['image_id']} qa_pairs[{qa_index}]")
    # All candidate boxes of the image, sorted unique: the GT LMDB's order.
    gt_box_ids = sorted({box_id for qa in image["qa_pairs"]
                         for box_id in [*qa["multiple_choices"], qa["answer"]]})
    position_of = {box_id: position for position, box_id in enumerate(gt_box_ids)}
    for qa in image["qa_pairs"]:
      unknown = [box_id for box_id in [*qa["multiple_choices"], qa["answer"]]
                 if box_id not in box_of_id]
      if unknown:
        raise DataError.at(path, f"qa_id {qa['qa_id']}", f"names box ids {unknown} "
                           "missing from 'boxes'", "every answer/choice in 'boxes'")
      candidates = sorted([*qa["multiple_choices"], qa["answer"]])
      entries.append({
          "caption": qa["question"],
          "sent_id": qa["qa_id"],
          "image_id": image["image_id"],
          "feature_key": feature_key(image["image_id"]),
          "ref_box": [float(value) for value in box_of_id[qa["answer"]]],
          "ref_id": qa["answer"],
          "mc_idx": [position_of[box_id] for box_id in candidates],
          "gt_box_ids": gt_box_ids,
      })
  skipped = SkipReport()
  if split == "train":
    entries = drop_clean_ids(entries, clean_image_ids, skipped)
  require_nonempty(entries, path, split)
  return AnnotationSplit(entries, skipped, path, split)
