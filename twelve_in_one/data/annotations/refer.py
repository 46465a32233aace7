"""RefCOCO / RefCOCO+ / RefCOCOg annotations (TASK9-11) without the ``refer`` toolkit.

The official ``refer_expression_dataset.py`` goes through the Python-2
``tools/refer`` submodule (``REFER(dataroot, dataset, splitBy)``), a common
stumbling block for its users. The two files it reads are simple, so we
read them directly, from the folder ``<dataroot>/<dataset>``:

* ``refs(unc).p`` (RefCOCO, RefCOCO+) or ``refs(umd).p`` (RefCOCOg): a
  pickled list of refs ``{ref_id, ann_id, image_id, split, category_id,
  sent_ids, sentences: [{raw, sent, sent_id, tokens}]}``;
* ``instances.json``: COCO-style ``images``, ``annotations`` (``bbox`` is
  ``[x, y, w, h]``) and ``categories``.

One entry per sentence, in ref order: ``{caption: sentence["raw"], sent_id,
image_id, ref_box: [x1, y1, x2, y2], ref_id}``. Split selection follows
``REFER.getRefIds``: ``testA``/``testB`` match every split containing the
letter, ``test`` every split containing "test".
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
    read_pickle,
    require_fields,
    require_nonempty,
)
from twelve_in_one.data.errors import DataError, SkipReport

SPLITS_OF_SPLIT_BY = {"unc": ("train", "val", "testA", "testB"),
                      "umd": ("train", "val", "test")}
# splitBy the official reader uses for each task's dataset.
SPLIT_BY_OF_DATASET = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def refs_path(data_dir: PathLike, split_by: str) -> str:
  """Path of ``refs(<split_by>).p`` in a dataset folder."""
  return os.path.join(data_dir, f"refs({split_by}).p")


def _ref_in_split(ref_split: str, split: str) -> bool:
  # Same rules as REFER.getRefIds.
  if split in ("testA", "testB"):
    return split[-1] in ref_split
  if split == "test":
    return "test" in ref_split
  return ref_split == split


def load_refer(data_dir: PathLike, split: str, split_by: str = "unc", *,
               clean_image_ids: frozenset[int] | None = None) -> AnnotationSplit:
  """Read one RefCOCO-family split from ``refs(<split_by>).p`` + ``instances.json``.

  Args:
    data_dir: the dataset folder, e.g. ``<dataroot>/refcoco+``.
    split: train/val/testA/testB (unc) or train/val/test (umd).
    split_by: ``"unc"`` or ``"umd"`` (see :data:`SPLIT_BY_OF_DATASET`).
    clean_image_ids: COCO test image ids to drop from the train split.

  Raises:
    DataError: a ref whose ``ann_id`` is not in instances.json, a malformed
      ref or box, or an empty split.
  """
  if split_by not in SPLITS_OF_SPLIT_BY:
    raise ValueError(f"unknown split_by {split_by!r}; valid: {list(SPLITS_OF_SPLIT_BY)}")
  check_split(split, SPLITS_OF_SPLIT_BY[split_by], f"RefCOCO ({split_by})")
  refs_file = refs_path(data_dir, split_by)
  instances_file = os.path.join(data_dir, "instances.json")
  refs = read_pickle(refs_file, "a pickled list of ref dicts")
  if not isinstance(refs, list):
    raise DataError.at(refs_file, "file", f"holds a {type(refs).__name__}",
                       "a pickled list of ref dicts")
  instances = read_json(instances_file, "COCO-style {images, annotations, categories}")
  require_fields(instances, ("images", "annotations", "categories"), instances_file,
                 "top level")
  box_of_annotation: dict[Any, list[float]] = {}
  for index, annotation in enumerate(instances["annotations"]):
    require_fields(annotation, ("id", "bbox"), instances_file, f"annotations[{index}]")
    box_of_annotation[annotation["id"]] = annotation["bbox"]

  entries: list[dict[str, Any]] = []
  for index, ref in enumerate(refs):
    where = f"ref [{index}]"
    require_fields(ref, ("ref_id", "ann_id", "image_id", "split", "sentences"),
                   refs_file, where)
    if not _ref_in_split(ref["split"], split):
      continue
    where = f"ref_id {ref['ref_id']}"
    if ref["ann_id"] not in box_of_annotation:
      raise DataError.at(refs_file, where, f"ann_id {ref['ann_id']} is not in "
                         f"{instances_file}", "every ref's ann_id among the annotations")
    box = box_of_annotation[ref["ann_id"]]
    if len(box) != 4 or box[2] < 0 or box[3] < 0:
      raise DataError.at(instances_file, f"annotation id {ref['ann_id']}",
                         f"bbox {box}", "[x, y, w, h] with w, h >= 0")
    x, y, width, height = (float(value) for value in box)
    # sent_ids parallels sentences; the toolkit zips the two.
    sent_ids = ref.get("sent_ids", [sentence.get("sent_id") for sentence in ref["sentences"]])
    if len(sent_ids) != len(ref["sentences"]):
      raise DataError.at(refs_file, where, f"{len(sent_ids)} sent_ids for "
                         f"{len(ref['sentences'])} sentences", "one sent_id per sentence")
    pairs = zip(ref["sentences"], sent_ids, strict=True)
    for sentence_index, (sentence, sent_id) in enumerate(pairs):
      require_fields(sentence, ("raw",), refs_file, f"{where} sentences[{sentence_index}]")
      entries.append({"caption": sentence["raw"], "sent_id": sent_id,
                      "image_id": ref["image_id"],
                      "ref_box": [x, y, x + width, y + height], "ref_id": ref["ref_id"]})
  skipped = SkipReport()
  if split == "train":
    entries = drop_clean_ids(entries, clean_image_ids, skipped)
  require_nonempty(entries, refs_file, split)
  return AnnotationSplit(entries, skipped, refs_file, split)
