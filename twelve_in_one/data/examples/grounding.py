"""Example builders of the region tasks: RefCOCO/+/g (V-logit), Visual7W and GuessWhat (V-logit-mc).

**RefCOCO, RefCOCO+, RefCOCOg** (`refer_expression_dataset.py`): the referring expression,
the image's regions and a per-region target = IoU with the referred box ("+1 pixel" convention,
pixel boxes; the global region's box is the whole image). In training the regions are the
detected ones plus the GT-LMDB boxes and IoU < 0.5 is set to 0; in evaluation they are the
detected regions only and the IoU is raw.

  Official bug fixed here: the official class concatenates detected and GT boxes and then keeps
  the first `max_region_num` (101) rows; the release's detection files hold 100 boxes + the
  global region = 101 rows, so **every GT box is dropped** and the training target can have no
  positive region at all. We keep the shape (101 rows, so training and evaluation compile to
  the same program) and *replace the tail*: all GT boxes are kept (at most 100) and the
  lowest-confidence detections make room for them, as the official VCR dataset does.

**Visual7W pointing** (`visual7w_pointing_dataset.py`) and **GuessWhat pointing**
(`guesswhat_pointing_dataset.py`): the question (GuessWhat: the whole dialogue), the detected
regions followed by the image's GT boxes, the candidate boxes' positions in the GT part
(`multiple_choice_ids`) and their IoU with the answer box, thresholded at 0.5, in every split.
Visual7W has 4 candidates; GuessWhat pads its candidate list with the official pad id
(`max_region_num - 101 - 1` = 204) to that same length.

  Official bugs fixed here: the official classes take the candidates' targets from rows
  `[101:]` of the concatenation, which is only the GT part when the detection file has exactly
  101 rows; we always start the GT boxes at row `num_detected_regions` (missing detections are
  masked gaps, extra ones cut). GuessWhat keeps at most 204 GT boxes so the pad id always
  points at an empty row. A candidate that falls beyond `max_region_num` (the official code
  would index past the logits) drops its example, counted in the skip report. A GT file whose
  box count differs from the annotation's candidate list (the ids would point at wrong boxes)
  is an error naming the file and image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twelve_in_one.data.annotations.common import read_pickle
from twelve_in_one.data.annotations.guesswhat import load_guesswhat
from twelve_in_one.data.annotations.refer import SPLIT_BY_OF_DATASET, load_refer
from twelve_in_one.data.annotations.visual7w import load_visual7w
from twelve_in_one.data.errors import DataError
from twelve_in_one.data.examples.common import (
    REF_BOX_CLIPPED,
    ImageBlock,
    Layout,
    SplitExamples,
    check_ref_box,
    detected_block,
    iou_plus_one,
    mixed_block,
    text_records,
)
from twelve_in_one.data.examples.context import BuildContext, ImageTable

IOU_THRESHOLD = 0.5
CANDIDATE_BEYOND_CAP = "candidate box beyond max_region_num (example dropped)"


def _threshold(iou: np.ndarray) -> np.ndarray:
  return np.where(iou < IOU_THRESHOLD, np.float32(0), iou).astype(np.float32)


def build_refer_split(ctx: BuildContext, split: str) -> SplitExamples:
  """RefCOCO / RefCOCO+ / RefCOCOg: expression + regions + per-region IoU target."""
  dataset = ctx.reader_dataset
  entries = load_refer(ctx.dataroot / dataset, split, SPLIT_BY_OF_DATASET[dataset],
                       clean_image_ids=ctx.clean_ids(split))
  layout = Layout.from_task(ctx.task)
  train = split == "train"
  images = ImageTable(*((ctx.features(split=split), ctx.features(gt=True)) if train else
                        (ctx.features(split=split),)))
  input_ids, input_mask = text_records(ctx.tokenizer, [e["caption"] for e in entries],
                                       layout.seq_len)
  records = []
  for row, entry in enumerate(entries):
    where = f"ref_id {entry['ref_id']} sent_id {entry['sent_id']}"
    image = images.add(entry["image_id"], entries.source, where)
    records.append({"input_ids": input_ids[row], "input_mask": input_mask[row],
                    "image_index": np.asarray([image], np.int32),
                    "example_id": np.int64(entry["sent_id"]), "example_key": where,
                    "ref_box": entry["ref_box"]})
  regions = layout.regions

  def load_image(index: int) -> ImageBlock:
    if train:
      return mixed_block(images.read(index, 0), images.read(index, 1), regions)
    return detected_block(images.read(index), regions)

  def finish_record(record: dict[str, Any], blocks: list[ImageBlock]) -> dict[str, Any]:
    block = blocks[0]
    ref_box, clipped = check_ref_box(record["ref_box"], block, entries.source,
                                     record["example_key"], clip=ctx.box_clip)
    iou = iou_plus_one(block.pixel_boxes, ref_box)
    target = np.zeros((regions,), np.float32)
    target[:iou.shape[0]] = _threshold(iou) if train else iou
    return {**record, "target": target, REF_BOX_CLIPPED: clipped}

  return SplitExamples(layout, split, records, images.keys, load_image, entries.skipped,
                       entries.source, finish_record=finish_record)


def _pointing_split(ctx: BuildContext, split: str, entries: Any, texts: list[str],
                    keys: list[Any], gt_counts: dict[str, int], example_ids: list[int],
                    example_keys: list[str], keep_last_row_empty: bool) -> SplitExamples:
  """Shared by Visual7W and GuessWhat: detected rows, GT rows from `num_detected_regions`.

  `keep_last_row_empty` (GuessWhat) keeps the row its pad candidate id points at empty.
  """
  layout = Layout.from_task(ctx.task)
  detected, candidates = layout.num_detected, layout.num_candidates
  capacity = layout.regions - detected - int(keep_last_row_empty)
  images = ImageTable(ctx.features(split=split), ctx.features(gt=True))
  input_ids, input_mask = text_records(ctx.tokenizer, texts, layout.seq_len)
  records = []
  for row, entry in enumerate(entries):
    mc_idx = list(entry["mc_idx"])
    if mc_idx and max(mc_idx) >= capacity:
      entries.skipped.add(CANDIDATE_BEYOND_CAP)
      continue
    image = images.add(keys[row], entries.source, example_keys[row])
    ids = (mc_idx + [candidates] * candidates)[:candidates]
    records.append({"input_ids": input_ids[row], "input_mask": input_mask[row],
                    "image_index": np.asarray([image], np.int32),
                    "example_id": np.int64(example_ids[row]), "example_key": example_keys[row],
                    "multiple_choice_ids": np.asarray(ids, np.int32),
                    "num_real_candidates": len(mc_idx), "ref_box": entry["ref_box"]})
  if not records:
    raise DataError.at(entries.source, f"split {split!r}", "has no example whose candidates "
                       f"fit in max_region_num={layout.regions}", "at least one example")
  regions = layout.regions
  gt_path = str(ctx.feature_path(gt=True))

  def load_image(index: int) -> ImageBlock:
    gt = images.read(index, 1)
    key = images.keys[index]
    if gt.num_boxes - 1 != gt_counts[key]:
      raise DataError.at(gt_path, f"image id {key!r}", f"holds {gt.num_boxes - 1} GT boxes "
                         f"(after its global region) but the annotations list {gt_counts[key]} "
                         "candidate boxes for this image",
                         "one GT box per distinct candidate box id, sorted by id")
    return mixed_block(images.read(index, 0), gt, regions, gt_start=detected,
                       gt_capacity=capacity)

  def finish_record(record: dict[str, Any], blocks: list[ImageBlock]) -> dict[str, Any]:
    block = blocks[0]
    ref_box, clipped = check_ref_box(record["ref_box"], block, entries.source,
                                     record["example_key"], clip=ctx.box_clip)
    real = record["num_real_candidates"]
    rows = detected + record["multiple_choice_ids"][:real]
    target = np.zeros((candidates,), np.float32)
    target[:real] = _threshold(iou_plus_one(block.pixel_boxes[rows], ref_box))
    return {**record, "target": target, REF_BOX_CLIPPED: clipped}

  return SplitExamples(layout, split, records, images.keys, load_image, entries.skipped,
                       entries.source, finish_record=finish_record)


def build_visual7w_split(ctx: BuildContext, split: str) -> SplitExamples:
  """Visual7W pointing: question + detected and GT regions + 4 candidates' IoU targets."""
  entries = load_visual7w(ctx.dataroot, split, clean_image_ids=ctx.clean_ids(split))
  gt_counts = {entry["feature_key"]: len(entry["gt_box_ids"]) for entry in entries}
  return _pointing_split(ctx, split, entries, [entry["caption"] for entry in entries],
                         [entry["feature_key"] for entry in entries], gt_counts,
                         [entry["sent_id"] for entry in entries],
                         [f"qa_id {entry['sent_id']}" for entry in entries],
                         keep_last_row_empty=False)


def build_guesswhat_split(ctx: BuildContext, split: str) -> SplitExamples:
  """GuessWhat pointing: dialogue + detected and GT regions + padded candidates' IoU targets."""
  entries = load_guesswhat(ctx.dataroot, split, clean_image_ids=ctx.clean_ids(split))
  objects = read_pickle(ctx.dataroot / "cache" / "image_bbox_list.pkl",
                        "a dict image id -> {'bboxes': [ids]}")
  gt_counts = {str(entry["image_id"]): len(set(objects[entry["image_id"]]["bboxes"]))
               for entry in entries}
  return _pointing_split(ctx, split, entries, [entry["dialogue"] for entry in entries],
                         [entry["image_id"] for entry in entries], gt_counts,
                         [entry["dialog_id"] for entry in entries],
                         [f"game id {entry['dialog_id']}" for entry in entries],
                         keep_last_row_empty=True)
