"""Shared pieces of the example builders: layout, image blocks, IoU, the split container.

An example is built in two halves so that region features are stored once per *image*, not
once per question (VQA alone has ~650k questions on ~120k images):

* an **example record**: token ids, the index of its image(s) in the split's image list, the
  official id and the target in compact form (sparse soft scores, IoU per region, ...);
* an **image record** (:class:`ImageBlock`): the image's region rows already cut, mixed with
  GT boxes and laid out as the task wants them, but not padded.

:func:`assemble_example` joins a record with its image(s) into the batch layout of
``twelve_in_one/tasks/process.py`` (and ``tasks/examples.py``). It is the one function used by
both the direct builders (:meth:`SplitExamples.example`, float32 features read from the release)
and the grain pipeline (float16 features read from the prepared TFDS datasets), so the two agree
by construction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from twelve_in_one.data.errors import DataError, SkipReport
from twelve_in_one.data.features import (
    DEFAULT_BOX_CLIP,
    DEFAULT_BOX_TOLERANCE,
    DEFAULT_FEATURE_DIM,
    ImageFeatures,
)
from twelve_in_one.data.regions import box_overshoot

if TYPE_CHECKING:
  from twelve_in_one.tasks.registry import Task

# Skip-report reasons of boxes clipped to their image (see `data/regions.py`), counted by prepare.
CLIPPED_REGION_BOXES = "region boxes past the image edge (clipped to the image)"
CLIPPED_REF_BOXES = "annotated boxes past the image edge (clipped to the image)"
# Marks a finished record whose annotated box was clipped (not a stored feature).
REF_BOX_CLIPPED = "ref_box_clipped"


@dataclasses.dataclass(frozen=True)
class Layout:
  """Everything the assembly needs to know about a task, as plain values.

  Plain values (not the `Task`) so that pipeline transforms pickle small into data-loader
  workers and stay valid for tasks registered only in the parent process.
  """
  task: str
  kind: str            # classifier | onehot | retrieval | grounding | pointing
  seq_len: int         # stored text length (the task's max_seq_length, no task token)
  regions: int         # regions per image (max_region_num)
  images: int = 1      # images per example (NLVR2: 2)
  num_options: int = 1     # retrieval options per caption
  num_classes: int = 0     # classifier answers / one-hot classes
  num_candidates: int = 0  # pointing candidates (multiple_choice_ids length)
  num_detected: int = 0    # pointing: candidates live after this many detected regions
  feature_dim: int = DEFAULT_FEATURE_DIM

  @classmethod
  def from_task(cls, task: Task, *, num_classes: int = 0,
                feature_dim: int = DEFAULT_FEATURE_DIM) -> Layout:
    """The layout of a registry task; `num_classes` is the answer-vocabulary size (classifiers)."""
    spec = task.head_spec
    kind = spec.target
    if kind == "onehot":
      num_classes = spec.num_classes
    num_candidates = task.num_candidates
    if kind == "pointing":
      # The candidates live after the detected regions (see `Task.num_candidates`).
      if num_candidates < 1 or task.num_detected_regions + num_candidates > task.max_region_num:
        raise ValueError(f"task {task.name}: {task.max_region_num} regions leave no room for "
                         f"{num_candidates} candidates after {task.num_detected_regions} "
                         "detected regions")
    return cls(task=task.name, kind=kind, seq_len=task.max_seq_length,
               regions=task.max_region_num, images=task.images_per_example,
               num_options=task.num_options, num_classes=num_classes,
               num_candidates=num_candidates, num_detected=task.num_detected_regions,
               feature_dim=feature_dim)


@dataclasses.dataclass
class ImageBlock:
  """One image's region rows in task order, before padding to `Layout.regions`.

  `features` is float32 when read from the release and float16 when read back from a prepared
  dataset. `pixel_boxes` (x1, y1, x2, y2 in pixels) are only needed for IoU targets and are not
  stored in prepared datasets.
  """
  image_id: str
  features: np.ndarray     # [n, F]
  loc: np.ndarray          # [n, 5] float32, normalised spatials
  mask: np.ndarray         # [n] int32, 1 on real regions (0 on gaps before GT boxes)
  pixel_boxes: np.ndarray | None = None   # [n, 4] float32
  width: int = 0
  height: int = 0
  clipped: int = 0         # rows whose box was clipped to the image (counted by prepare)

  def to_record(self) -> dict[str, Any]:
    """The stored image record (features as float16)."""
    return {"image_feat": self.features.astype(np.float16), "image_loc": self.loc,
            "image_mask": self.mask, "image_id": self.image_id}


def detected_block(image: ImageFeatures, max_regions: int) -> ImageBlock:
  """The first `max_regions` rows (global region first, then by detector confidence)."""
  kept = min(image.num_boxes, max_regions)
  return ImageBlock(image.image_id, image.features[:kept], image.boxes_norm5[:kept],
                    np.ones((kept,), np.int32), image.boxes_pixels5[:kept, :4],
                    image.image_w, image.image_h, _clipped(image, slice(0, kept)))


def _clipped(image: ImageFeatures, rows: slice) -> int:
  return 0 if image.clipped is None else int(image.clipped[rows].sum())


def mixed_block(detected: ImageFeatures, gt: ImageFeatures, max_regions: int, *,
                gt_start: int | None = None, gt_capacity: int | None = None) -> ImageBlock:
  """Detected rows followed by the GT-box rows (the GT file's global region dropped).

  With `gt_start=None` (RefCOCO training) the GT boxes replace the tail of the detected
  regions: at most `max_regions - 1` GT boxes are kept and the detected regions are cut to
  make room, so every GT box is present. With `gt_start=D` (Visual7W, GuessWhat) the GT
  boxes always start at row D, detected rows beyond D are cut and missing ones left as
  masked gaps, so candidate ids index the GT part whatever the detector returned; at most
  `gt_capacity` (default: all remaining rows) GT boxes are kept.
  """
  num_gt = gt.num_boxes - 1
  if gt_start is None:
    num_gt = min(num_gt, max_regions - 1)
    det_rows, gap = min(detected.num_boxes, max_regions - num_gt), 0
  else:
    capacity = max_regions - gt_start if gt_capacity is None else gt_capacity
    num_gt = min(num_gt, capacity)
    det_rows = min(detected.num_boxes, gt_start)
    gap = gt_start - det_rows
  feature_dim = detected.features.shape[1]
  gt_rows = slice(1, 1 + num_gt)
  features = np.concatenate([detected.features[:det_rows],
                             np.zeros((gap, feature_dim), np.float32), gt.features[gt_rows]])
  loc = np.concatenate([detected.boxes_norm5[:det_rows], np.zeros((gap, 5), np.float32),
                        gt.boxes_norm5[gt_rows]])
  boxes = np.concatenate([detected.boxes_pixels5[:det_rows, :4], np.zeros((gap, 4), np.float32),
                          gt.boxes_pixels5[gt_rows, :4]])
  mask = np.concatenate([np.ones((det_rows,), np.int32), np.zeros((gap,), np.int32),
                         np.ones((num_gt,), np.int32)])
  return ImageBlock(detected.image_id, features, loc, mask, boxes, detected.image_w,
                    detected.image_h, _clipped(detected, slice(0, det_rows))
                    + _clipped(gt, gt_rows))


def iou_plus_one(boxes: np.ndarray, ref_box: Sequence[float]) -> np.ndarray:
  """IoU of each pixel box with `ref_box`, in the official float32 "+1 pixel" convention.

  Areas and intersections count pixels inclusively (`x2 - x1 + 1`), as
  `refer_expression_dataset.iou` does.
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  ref = np.asarray(ref_box, np.float32)
  one = np.float32(1)
  ref_area = (ref[2] - ref[0] + one) * (ref[3] - ref[1] + one)
  areas = (boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one)
  iw = np.maximum(np.minimum(boxes[:, 2], ref[2]) - np.maximum(boxes[:, 0], ref[0]) + one, 0)
  ih = np.maximum(np.minimum(boxes[:, 3], ref[3]) - np.maximum(boxes[:, 1], ref[1]) + one, 0)
  intersection = iw * ih
  return (intersection / (areas + ref_area - intersection)).astype(np.float32)


def check_ref_box(ref_box: Sequence[float], block: ImageBlock, source: str, where: str,
                  tolerance: float = DEFAULT_BOX_TOLERANCE, clip: float = DEFAULT_BOX_CLIP
                  ) -> tuple[list[float], bool]:
  """The annotated box to use, and whether it was clipped to its image.

  Within `tolerance` px of the image it is kept as annotated; up to `clip` px past the edge it
  is clipped to the image (see `data/regions.py`).

  Raises:
    DataError: the box reaches further out, or has x2 < x1 or y2 < y1.
  """
  box = [float(value) for value in ref_box]
  overshoot = float(box_overshoot(np.asarray(box, np.float32), block.width, block.height)[0])
  if not overshoot <= max(tolerance, clip) or box[2] < box[0] or box[3] < box[1]:
    raise DataError.at(source, where, f"box {box} is outside its "
                       f"{block.width}x{block.height} image {block.image_id!r}",
                       f"x1<=x2, y1<=y2 inside the image (pixels; tolerance {tolerance} px, "
                       f"clipped up to {clip} px past the edge)")
  if overshoot <= tolerance:
    return box, False
  limits = (block.width, block.height, block.width, block.height)
  return [min(max(value, 0.0), float(limit)) for value, limit in zip(box, limits)], True


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The generator of one example's random choices: a pure function of (seed, epoch, index)."""
  return np.random.default_rng([int(seed), int(epoch), int(index)])


class Lookup(Protocol):
  """Random access to a split's example and image records (release files or prepared data)."""

  def record(self, index: int) -> Mapping[str, Any]:
    ...

  def image(self, index: int) -> Mapping[str, Any]:
    ...


def pad_image(image: Mapping[str, Any], regions: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Zero-pad one image record to `regions` rows: (features, spatials, mask)."""
  features = np.asarray(image["image_feat"])
  count = features.shape[0]
  if count > regions:
    raise ValueError(f"image {image.get('image_id')!r} has {count} region rows, more than the "
                     f"{regions} this layout holds; was it prepared for another max_region_num?")
  padded = np.zeros((regions, features.shape[1]), features.dtype)
  padded[:count] = features
  loc = np.zeros((regions, 5), np.float32)
  loc[:count] = image["image_loc"]
  mask = np.zeros((regions,), np.int32)
  mask[:count] = image["image_mask"]
  return padded, loc, mask


def _text(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
  ids = np.asarray(record["input_ids"], np.int32)
  return {"input_ids": ids, "input_mask": np.asarray(record["input_mask"], np.int32),
          "segment_ids": np.zeros_like(ids)}


def assemble_example(layout: Layout, index: int, lookup: Lookup, *, seed: int = 0,
                     epoch: int = 0, tables: Mapping[str, np.ndarray] | None = None,
                     hard_negatives: bool = False) -> dict[str, np.ndarray]:
  """Example `index` of a split in the batch layout (one row of a task batch).

  Retrieval draws its negatives from `example_rng(seed, epoch, index)`; every other task is a
  pure function of its records.
  """
  record = lookup.record(index)
  if layout.kind == "retrieval":
    # Imported here: retrieval.py imports this module.
    from twelve_in_one.data.examples.matching import assemble_retrieval
    return assemble_retrieval(layout, index, record, lookup, tables or {},
                              example_rng(seed, epoch, index), hard_negatives)
  image_index = np.asarray(record["image_index"]).reshape(-1)
  blocks = [pad_image(lookup.image(int(j)), layout.regions) for j in image_index]
  example = _text(record)
  example["image_feat"] = np.concatenate([block[0] for block in blocks])
  example["image_loc"] = np.concatenate([block[1] for block in blocks])
  example["image_mask"] = np.concatenate([block[2] for block in blocks])
  example.update(assemble_target(layout, record))
  return example


def assemble_target(layout: Layout, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The target entries of one (non-retrieval) example from its stored record."""
  if layout.kind == "classifier":
    target = np.zeros((layout.num_classes,), np.float32)
    target[np.asarray(record["answer_labels"], np.int64)] = record["answer_scores"]
    return {"target": target}
  if layout.kind == "onehot":
    return {"target": np.asarray(record["target"], np.float32)}
  if layout.kind == "grounding":
    return {"target": np.asarray(record["target"], np.float32).reshape(layout.regions, 1)}
  if layout.kind == "pointing":
    return {"multiple_choice_ids": np.asarray(record["multiple_choice_ids"], np.int32),
            "target": np.asarray(record["target"], np.float32).reshape(-1, 1)}
  raise ValueError(f"task {layout.task}: unknown example kind {layout.kind!r}")


@dataclasses.dataclass
class SplitExamples:
  """One split of a task, built from the release files, with random access.

  Attributes:
    layout: the task's layout.
    split: the split name.
    records: the example records (token ids, image indices, ids and targets).
    image_keys: the split's images, as keys of the feature file(s); `image_index` of a
      record indexes this list.
    load_image: builds image block j from the release feature files.
    skipped: what the annotation readers and the builder dropped, per reason.
    source: the main annotation file.
    tables: retrieval lookup tables (captions per image, hard negatives), else empty.
    hard_negatives: retrieval training form (option 4 from the hard-negative pool).
    finish_record: fills a record's targets from its image blocks (IoU targets), if any.
  """
  layout: Layout
  split: str
  records: list[dict[str, Any]]
  image_keys: list[str]
  load_image: Callable[[int], ImageBlock]
  skipped: SkipReport
  source: str
  tables: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  hard_negatives: bool = False
  finish_record: Callable[[dict[str, Any], list[ImageBlock]], dict[str, Any]] | None = None

  def __len__(self) -> int:
    return len(self.records)

  def image(self, index: int) -> ImageBlock:
    """Image block `index`, read from the release feature file(s)."""
    return self.load_image(index)

  def final_record(self, index: int, blocks: list[ImageBlock] | None = None) -> dict[str, Any]:
    """Example record `index` with its targets, as stored in the prepared dataset."""
    record = self.records[index]
    if self.finish_record is None:
      return record
    if blocks is None:
      blocks = [self.image(int(j)) for j in np.asarray(record["image_index"]).reshape(-1)]
    return self.finish_record(record, blocks)

  def example(self, index: int, *, seed: int = 0, epoch: int = 0) -> dict[str, np.ndarray]:
    """Example `index` in the batch layout, float32, straight from the release files."""
    return assemble_example(self.layout, index, _DirectLookup(self), seed=seed, epoch=epoch,
                            tables=self.tables, hard_negatives=self.hard_negatives)


class _DirectLookup:
  """`Lookup` over a `SplitExamples` (features straight from the release)."""

  def __init__(self, split: SplitExamples) -> None:
    self._split = split

  def record(self, index: int) -> Mapping[str, Any]:
    return self._split.final_record(index)

  def image(self, index: int) -> Mapping[str, Any]:
    block = self._split.image(index)
    return {"image_feat": block.features, "image_loc": block.loc, "image_mask": block.mask,
            "image_id": block.image_id}


def text_records(tokenizer: Any, texts: Sequence[str], seq_len: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and masks of all texts at once ([CLS] ... [SEP], right-padded)."""
  input_ids, input_mask, _ = tokenizer.encode_batch(list(texts), seq_len)
  return input_ids, input_mask


def require_examples(records: Sequence[Any], source: str, split: str) -> None:
  """Raise DataError if the builder's own skipping emptied a split."""
  if not records:
    raise DataError.at(source, f"split {split!r}", "has no usable example after skipping "
                       "(see the skip report)", "at least one example")
