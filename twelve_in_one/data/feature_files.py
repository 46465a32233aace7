"""Feature readers for the two non-LMDB formats: bottom-up TSV and npy folders.

* :class:`BottomUpTSV`: the bottom-up-attention TSV files (fields image_id,
  image_w, image_h, num_boxes, boxes, features; base64 float32).
* :class:`NpyFeatureFolder`: a folder of per-image ``.npy`` (pickled dict) or
  ``.npz`` files as written by the official ``script/extract_features.py``.

Both give exactly the same :class:`ImageFeatures` as the release LMDB for the
same content (see :mod:`twelve_in_one.data.features`).
"""

from __future__ import annotations

import base64
import csv
import os
import pickle
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twelve_in_one.data.errors import DataError
from twelve_in_one.data.regions import (
    DEFAULT_BOX_TOLERANCE,
    DEFAULT_FEATURE_DIM,
    FeatureReader,
    normalize_image_id,
)

_TSV_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")


def _raise_csv_field_limit() -> None:
  # Base64 feature fields are far longer than csv's 128 KiB default limit.
  limit = sys.maxsize
  while True:
    try:
      csv.field_size_limit(limit)
      return
    except OverflowError:
      limit //= 10


class BottomUpTSV(FeatureReader):
  """Reader of bottom-up-attention TSV feature files.

  Each line holds the tab-separated fields image_id, image_w, image_h,
  num_boxes, boxes, features; boxes and features are base64 float32. The
  files are scanned once to index the byte offset of every line, so an
  access reads one line only.
  """

  def __init__(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
               feature_dim: int = DEFAULT_FEATURE_DIM,
               box_tolerance: float = DEFAULT_BOX_TOLERANCE) -> None:
    """Index one TSV file, or several (the COCO release is split in parts)."""
    path_list = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    super().__init__(os.pathsep.join(os.fspath(p) for p in path_list),
                     feature_dim, box_tolerance)
    _raise_csv_field_limit()
    self._files = [os.fspath(p) for p in path_list]
    # image id -> (file index, byte offset, 1-based row number)
    self._locations: dict[str, tuple[int, int, int]] = {}
    for file_index, file_path in enumerate(self._files):
      if not os.path.isfile(file_path):
        raise DataError.at(file_path, "file", "does not exist", "a bottom-up TSV feature file")
      offset = 0
      with open(file_path, "rb") as handle:
        for row_number, line in enumerate(handle, start=1):
          if line.strip():
            image_id = line.split(b"\t", 1)[0].decode("utf-8")
            if image_id in self._locations:
              first = self._locations[image_id]
              raise DataError.at(
                  file_path, f"row {row_number}",
                  f"image id {image_id!r} already appeared in "
                  f"{self._files[first[0]]} row {first[2]}",
                  "each image id once")
            self._locations[image_id] = (file_index, offset, row_number)
            self._ids.append(image_id)
          offset += len(line)

  def _has(self, image_id: str) -> bool:
    return image_id in self._locations

  def _read_raw(self, image_id: str) -> tuple[Any, Any, Any, Any, str]:
    file_index, offset, row_number = self._locations[image_id]
    file_path = self._files[file_index]
    with open(file_path, "rb") as handle:
      handle.seek(offset)
      line = handle.readline().decode("utf-8").rstrip("\r\n")
    record = f"row {row_number} (image id {image_id!r})"
    row = next(csv.reader([line], delimiter="\t"))
    if len(row) != len(_TSV_FIELDS):
      raise DataError.at(file_path, record, f"has {len(row)} fields",
                         f"{len(_TSV_FIELDS)} tab-separated fields {_TSV_FIELDS}")
    fields = dict(zip(_TSV_FIELDS, row, strict=True))
    try:
      num_boxes = int(fields["num_boxes"])
      boxes = np.frombuffer(base64.b64decode(fields["boxes"]), dtype=np.float32)
      features = np.frombuffer(base64.b64decode(fields["features"]), dtype=np.float32)
    except ValueError as error:
      raise DataError.at(file_path, record, f"cannot be decoded ({error})",
                         "integer num_boxes and base64 float32 boxes/features") from error
    # Unlike the LMDB, the TSV buffers are shaped by num_boxes.
    if boxes.size != num_boxes * 4 or features.size != num_boxes * self.feature_dim:
      raise DataError.at(file_path, record,
                         f"num_boxes={num_boxes} but boxes hold {boxes.size} and "
                         f"features {features.size} floats",
                         f"{num_boxes}*4 box floats and {num_boxes}*{self.feature_dim} "
                         "feature floats")
    return (features.reshape(num_boxes, self.feature_dim), boxes.reshape(num_boxes, 4),
            fields["image_h"], fields["image_w"], file_path)


class NpyFeatureFolder(FeatureReader):
  """Reader of a folder of per-image ``.npy``/``.npz`` files.

  ``script/extract_features.py`` saves one ``<image id>.npy`` per image: a
  pickled dict with image_id, image_width, image_height, num_boxes, bbox,
  features, objects and cls_prob. ``.npz`` files with the same keys are
  accepted too. Files are indexed by name (the id), and the stored
  ``image_id`` is checked against the name on access.
  """

  _SUFFIXES = (".npy", ".npz")

  def __init__(self, directory: str | os.PathLike[str], *,
               feature_dim: int = DEFAULT_FEATURE_DIM,
               box_tolerance: float = DEFAULT_BOX_TOLERANCE) -> None:
    """Index every ``.npy``/``.npz`` file directly inside ``directory``."""
    super().__init__(directory, feature_dim, box_tolerance)
    if not os.path.isdir(self.path):
      raise DataError.at(self.path, "directory", "does not exist",
                         "a folder of per-image .npy/.npz feature files")
    self._file_of: dict[str, Path] = {}
    for file_path in sorted(Path(self.path).iterdir()):
      if file_path.suffix not in self._SUFFIXES or not file_path.is_file():
        continue
      image_id = file_path.stem
      if image_id in self._file_of:
        raise DataError.at(self.path, f"image id {image_id!r}",
                           f"stored twice ({self._file_of[image_id].name} and "
                           f"{file_path.name})", "one file per image")
      self._file_of[image_id] = file_path
      self._ids.append(image_id)

  def _has(self, image_id: str) -> bool:
    return image_id in self._file_of

  def _read_raw(self, image_id: str) -> tuple[Any, Any, Any, Any, str]:
    file_path = self._file_of[image_id]
    item = self._load(file_path)
    record = f"image id {image_id!r}"
    stored_id = item.get("image_id")
    if stored_id is not None and normalize_image_id(_scalar(stored_id)) != image_id:
      raise DataError.at(file_path, record, f"file stores image_id {stored_id!r}",
                         "the image_id to match the file name")
    fields = {}
    for name, spellings in (("image_w", ("image_width", "image_w")),
                            ("image_h", ("image_height", "image_h")),
                            ("boxes", ("bbox", "boxes")),
                            ("features", ("features",))):
      found = [spelling for spelling in spellings if spelling in item]
      if not found:
        raise DataError.at(file_path, record, f"lacks {' / '.join(spellings)}",
                           "keys image_id, image_width, image_height, bbox, features")
      fields[name] = item[found[0]]
    return (fields["features"], fields["boxes"], _scalar(fields["image_h"]),
            _scalar(fields["image_w"]), os.fspath(file_path))

  @staticmethod
  def _load(file_path: Path) -> Mapping[str, Any]:
    try:
      if file_path.suffix == ".npz":
        with np.load(file_path, allow_pickle=False) as archive:
          return {name: archive[name] for name in archive.files}
      # np.save of a dict stores a 0-d object array holding the dict.
      loaded = np.load(file_path, allow_pickle=True)
    except (OSError, ValueError, pickle.UnpicklingError) as error:
      raise DataError.at(file_path, "file", f"cannot be loaded ({error})",
                         "an np.save'd dict (.npy) or an .npz archive") from error
    if isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.shape == ():
      loaded = loaded.item()
    if not isinstance(loaded, Mapping):
      raise DataError.at(file_path, "file", f"holds a {type(loaded).__name__}",
                         "a dict saved with np.save(path, dict)")
    return loaded


def _scalar(value: Any) -> Any:
  """Unwrap 0-d numpy arrays (as .npz stores scalars) into Python values."""
  if isinstance(value, np.ndarray) and value.shape == ():
    return value.item()
  return value
