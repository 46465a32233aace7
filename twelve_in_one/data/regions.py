"""One image's detector regions: the common type and the official transform.

Every feature reader returns :class:`ImageFeatures`, built by
:func:`build_image_features`, which validates the raw arrays and applies the
per-access transform of the official ``ImageFeaturesH5Reader`` (reference
section 4.2): a global region (the mean of all region features) is prepended
and every box gets a 5-d location. :func:`pad_regions` then cuts or pads to a
task's fixed region count, as every official dataset class does.

Boxes past the image edge: up to ``DEFAULT_BOX_TOLERANCE`` (1 px, rescaling
round-off) they are kept as stored, as the official reader keeps them. Up to
``DEFAULT_BOX_CLIP`` (4 px) past it they are clipped to the image and marked
in ``ImageFeatures.clipped`` so ``prepare`` can count them: real releases hold
a few such boxes (2 of 2,484 Visual Genome boxes overshoot by 2 px), and one
of them must not abort a whole task. Beyond that, or with ``x2 < x1`` (an
``[x, y, w, h]`` box read as xyxy), a box is an error naming file, image and
box. ``box_clip=0`` (``prepare --strict_boxes``) turns every overshoot beyond
the tolerance into that error.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import os
from typing import Any

import numpy as np

from twelve_in_one.data.errors import DataError

DEFAULT_FEATURE_DIM = 2048
# The detector clips boxes to [0, W-1] x [0, H-1]; rescaling by the image scale
# can push a coordinate a fraction of a pixel past that, so allow one pixel.
DEFAULT_BOX_TOLERANCE = 1.0
# How far past the edge a box may reach and still be clipped to the image (see above); far
# enough for the real overshoots seen, small next to any box misread as xywh or misscaled.
DEFAULT_BOX_CLIP = 4.0
ImageId = int | str | bytes | np.integer | np.str_


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFeatures:
  """One image's regions after the official reader transform.

  Attributes:
    image_id: the id as stored in the feature file, as a string.
    features: float32 [num_boxes, feature_dim]; row 0 is the global region
      (mean of all detector regions), rows 1.. the detector regions.
    boxes_norm5: float32 [num_boxes, 5] locations
      ``[x1/W, y1/H, x2/W, y2/H, (x2-x1)(y2-y1)/(W*H)]``; row 0 is
      ``[0, 0, 1, 1, 1]``. These are the model's spatial inputs.
    boxes_pixels5: float32 [num_boxes, 5], the official "ori" boxes: pixel
      ``x1, y1, x2, y2`` (used for IoU targets); row 0 is
      ``[0, 0, W, H, W*H]``. Column 4 of rows 1.. is the *normalised* area,
      exactly as the official reader leaves it; only columns 0-3 are used.
    num_boxes: number of regions including the global one (N + 1).
    image_h: original image height in pixels.
    image_w: original image width in pixels.
    clipped: bool [num_boxes], True on rows whose box was clipped to the
      image; None when no box was.
  """

  image_id: str
  features: np.ndarray
  boxes_norm5: np.ndarray
  boxes_pixels5: np.ndarray
  num_boxes: int
  image_h: int
  image_w: int
  clipped: np.ndarray | None = None


def build_image_features(
    image_id: str,
    features: Any,
    boxes: Any,
    image_h: Any,
    image_w: Any,
    *,
    source: str | os.PathLike[str],
    feature_dim: int = DEFAULT_FEATURE_DIM,
    box_tolerance: float = DEFAULT_BOX_TOLERANCE,
    box_clip: float = DEFAULT_BOX_CLIP,
) -> ImageFeatures:
  """Validate one image's raw boxes/features and apply the official transform.

  Args:
    image_id: the image id (for error messages and the result).
    features: [N, feature_dim] (or flat N*feature_dim) region features.
    boxes: [N, 4] (or flat N*4) x1, y1, x2, y2 boxes in pixels.
    image_h: original image height in pixels.
    image_w: original image width in pixels.
    source: the file the data came from, named in errors.
    feature_dim: expected feature width.
    box_tolerance: how many pixels a box may extend past the image border
      and be kept as stored.
    box_clip: how many pixels it may extend past it and be clipped to the
      image (0: none; only boxes beyond ``box_tolerance`` are clipped).

  Raises:
    DataError: on a wrong shape, a non-finite value, no regions, or a box
      outside the image (message names file, image id and box index).
  """
  record = f"image id {image_id!r}"
  features = np.asarray(features, dtype=np.float32)
  boxes = np.asarray(boxes, dtype=np.float32)
  # The official reader does reshape(-1, 2048) / reshape(-1, 4), so a flat
  # buffer is accepted as long as it divides evenly.
  if features.ndim == 1 and features.size % feature_dim == 0:
    features = features.reshape(-1, feature_dim)
  if boxes.ndim == 1 and boxes.size % 4 == 0:
    boxes = boxes.reshape(-1, 4)
  if features.ndim != 2 or features.shape[1] != feature_dim:
    raise DataError.at(source, record, f"features have shape {features.shape}",
                       f"[num_boxes, {feature_dim}]")
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise DataError.at(source, record, f"boxes have shape {boxes.shape}", "[num_boxes, 4]")
  num_regions = features.shape[0]
  if boxes.shape[0] != num_regions:
    raise DataError.at(source, record,
                       f"{boxes.shape[0]} boxes but {num_regions} feature rows",
                       "one box per feature row")
  if num_regions == 0:
    raise DataError.at(source, record, "has no regions", "at least one box")
  try:
    height, width = int(image_h), int(image_w)
  except (TypeError, ValueError) as error:
    raise DataError.at(source, record, f"image size ({image_h!r}, {image_w!r}) is not "
                       "an integer", "integer image_h and image_w") from error
  if height <= 0 or width <= 0:
    raise DataError.at(source, record, f"image size is {width}x{height}",
                       "positive image_w and image_h")
  if not np.isfinite(features).all():
    raise DataError.at(source, record, "features contain NaN or inf", "finite values")
  clipped = _check_boxes(boxes, width, height, box_tolerance, box_clip, source, record)
  if clipped is not None:
    boxes = boxes.copy()
    boxes[clipped] = np.clip(boxes[clipped], 0, [width, height, width, height])

  # Same float32 arithmetic, in the same order, as ImageFeaturesH5Reader.
  global_feature = np.sum(features, axis=0) / num_regions
  all_features = np.concatenate([global_feature[None, :], features], axis=0)
  location = np.zeros((num_regions, 5), dtype=np.float32)
  location[:, :4] = boxes
  location[:, 4] = ((location[:, 3] - location[:, 1]) * (location[:, 2] - location[:, 0])
                    / (float(width) * float(height)))
  location_pixels = location.copy()
  location[:, 0] = location[:, 0] / float(width)
  location[:, 1] = location[:, 1] / float(height)
  location[:, 2] = location[:, 2] / float(width)
  location[:, 3] = location[:, 3] / float(height)
  global_norm = np.array([[0, 0, 1, 1, 1]], dtype=np.float32)
  global_pixels = np.array([[0, 0, width, height, width * height]], dtype=np.float32)
  return ImageFeatures(
      image_id=str(image_id),
      features=all_features,
      boxes_norm5=np.concatenate([global_norm, location], axis=0),
      boxes_pixels5=np.concatenate([global_pixels, location_pixels], axis=0),
      num_boxes=num_regions + 1,
      image_h=height,
      image_w=width,
      clipped=None if clipped is None else np.concatenate([[False], clipped]),
  )


def box_overshoot(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
  """How many pixels each x1, y1, x2, y2 box reaches past its image's edges (0 inside)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return np.maximum.reduce([-boxes[:, 0], -boxes[:, 1], boxes[:, 2] - width,
                            boxes[:, 3] - height, np.zeros(len(boxes), np.float32)])


def _check_boxes(boxes: np.ndarray, width: int, height: int, tolerance: float, clip: float,
                 source: str | os.PathLike[str], record: str) -> np.ndarray | None:
  """The mask of boxes to clip (None if none); DataError naming the first bad box."""
  overshoot = box_overshoot(boxes, width, height)
  bad = ~np.isfinite(boxes).all(axis=1) | ~(overshoot <= max(tolerance, clip))
  # x2 < x1 is what an [x, y, w, h] box read as xyxy looks like.
  bad |= (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
  if bad.any():
    index = int(np.flatnonzero(bad)[0])
    raise DataError.at(
        source, f"{record}, box {index}",
        f"box {boxes[index].tolist()} is outside the {width}x{height} image",
        f"x1<=x2 within [0, {width}] and y1<=y2 within [0, {height}] "
        f"(tolerance {tolerance} px; clipped up to {clip} px past the edge), "
        "pixel x1,y1,x2,y2")
  clipped = overshoot > tolerance
  return clipped if clipped.any() else None


def pad_regions(
    image_features: ImageFeatures, max_region_num: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Truncate/zero-pad one image's regions to ``max_region_num`` rows.

  The official datasets keep the first ``min(num_boxes, max_region_num)``
  regions (global first, then detector order, which is by confidence).

  Returns:
    ``(features [max_region_num, D] float32, spatials [max_region_num, 5]
    float32, image_mask [max_region_num] int32)`` with mask 1 on kept rows.
  """
  if max_region_num < 1:
    raise ValueError(f"max_region_num must be positive, got {max_region_num}")
  kept = min(image_features.num_boxes, max_region_num)
  feature_dim = image_features.features.shape[1]
  features = np.zeros((max_region_num, feature_dim), dtype=np.float32)
  spatials = np.zeros((max_region_num, 5), dtype=np.float32)
  image_mask = np.zeros((max_region_num,), dtype=np.int32)
  features[:kept] = image_features.features[:kept]
  spatials[:kept] = image_features.boxes_norm5[:kept]
  image_mask[:kept] = 1
  return features, spatials, image_mask


def normalize_image_id(image_id: ImageId) -> str:
  """The string form under which an image id is stored (``str(image_id)``)."""
  if isinstance(image_id, bytes):
    return image_id.decode("utf-8")
  if isinstance(image_id, np.integer):
    return str(int(image_id))
  return str(image_id)


def _id_sort_key(image_id: str) -> tuple[int, int, str]:
  # Numeric ids sort numerically so "nearby" means close in value.
  if image_id.isdigit():
    return (0, int(image_id), "")
  return (1, 0, image_id)


class FeatureReader(abc.ABC):
  """Base of the feature readers: id normalisation, membership, missing-id errors.

  Subclasses index their file(s) once in ``__init__`` (filling ``_ids``)
  and implement ``_has`` and ``_read_raw``; ``__getitem__`` then validates
  and transforms the raw arrays with :func:`build_image_features`.
  """

  def __init__(self, path: str | os.PathLike[str], feature_dim: int,
               box_tolerance: float, box_clip: float = DEFAULT_BOX_CLIP) -> None:
    self.path = os.fspath(path)
    self.feature_dim = feature_dim
    self.box_tolerance = box_tolerance
    self.box_clip = box_clip
    self._ids: list[str] = []
    self._sorted_ids: list[str] | None = None

  @abc.abstractmethod
  def _read_raw(self, image_id: str) -> tuple[Any, Any, Any, Any, str]:
    """Return ``(features, boxes, image_h, image_w, source)`` for a known id."""

  @abc.abstractmethod
  def _has(self, image_id: str) -> bool:
    """Whether the (normalised) image id is stored."""

  def __getitem__(self, image_id: ImageId) -> ImageFeatures:
    key = normalize_image_id(image_id)
    if not self._has(key):
      raise self._missing(key)
    features, boxes, image_h, image_w, source = self._read_raw(key)
    return build_image_features(key, features, boxes, image_h, image_w, source=source,
                                feature_dim=self.feature_dim,
                                box_tolerance=self.box_tolerance, box_clip=self.box_clip)

  def __contains__(self, image_id: object) -> bool:
    if not isinstance(image_id, (int, str, bytes, np.integer)):
      return False
    return self._has(normalize_image_id(image_id))

  def __len__(self) -> int:
    return len(self._ids)

  def keys(self) -> list[str]:
    """All image ids, as strings, in file order."""
    return list(self._ids)

  def _missing(self, image_id: str, shown: int = 3) -> DataError:
    if self._sorted_ids is None:
      self._sorted_ids = sorted(self._ids, key=_id_sort_key)
    position = bisect.bisect_left(self._sorted_ids, _id_sort_key(image_id),
                                  key=_id_sort_key)
    nearby = self._sorted_ids[max(0, position - shown):position + shown]
    return DataError.at(self.path, f"image id {image_id!r}",
                        f"not in this feature file ({len(self._ids)} images; "
                        f"nearby known ids: {nearby})",
                        "an image id stored as str(image_id)")
