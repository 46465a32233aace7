"""Reading the Conceptual Captions corpus in the layout the official pretraining loader reads.

The official `train_concap.py --file_path DIR` reads, for each split,

    DIR/training_feat_all.lmdb     DIR/caption_train.json       (train)
    DIR/validation_feat_all.lmdb   DIR/caption_val.json         (val)

* The `.lmdb` is what tensorpack's `LMDBSerializer.save` writes: a single LMDB data file
  (`subdir=False`, with its `-lock` file beside it) or an LMDB directory. Record `i` is stored
  under the key `b"%08d" % i` and the key list under `b"__keys__"`, each value serialized as in
  `wire.py`. A record (a tensorpack datapoint) is the list of the eight `FIELDS`:

  | field | value |
  |---|---|
  | image_feature_wp | float [num_boxes, 2048]: the detector's region features |
  | image_target_wp | float [num_boxes, 1601]: the detector's class distribution per region |
  | image_location_wp | float [num_boxes, 4]: x1, y1, x2, y2 in pixels of the original image |
  | num_boxes | int: the number of regions (the official loader holds at most 36) |
  | image_h, image_w | int: the original image's size |
  | image_id | str: the image's id |
  | caption | str: the image's caption |

* The caption file is a JSON object `{image_id: caption}`. The official loader takes the list
  of its values, in file order, and draws the random other caption of a misaligned pair from
  it (`BertPreprocessBatch.get_random_caption`).

The official loader reads the records in key order (`LMDBSerializer.load(shuffle=False)`);
record `i` here is the `i`-th key of `__keys__` (the key order, for a database tensorpack
wrote), or of the database's own key order when `__keys__` is absent.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twelve_in_one.data.concap import wire
from twelve_in_one.data.errors import DataError
from twelve_in_one.data.features import _shared_environment

FIELDS = ("image_feature_wp", "image_target_wp", "image_location_wp", "num_boxes", "image_h",
          "image_w", "image_id", "caption")
KEYS_ENTRY = b"__keys__"
# split -> (feature LMDB, caption file), the names `ConceptCapLoaderTrain/Val` open.
SPLIT_FILES = {"train": ("training_feat_all.lmdb", "caption_train.json"),
               "val": ("validation_feat_all.lmdb", "caption_val.json")}
_EXPECTED_RECORD = f"a list of the {len(FIELDS)} fields {', '.join(FIELDS)}"


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionedImage:
  """One record of the corpus: an image's detector regions and its caption (see `FIELDS`)."""
  image_feature_wp: np.ndarray
  image_target_wp: np.ndarray
  image_location_wp: np.ndarray
  num_boxes: int
  image_h: int
  image_w: int
  image_id: str
  caption: str

  def to_datapoint(self) -> list[Any]:
    """The record as the tensorpack datapoint the official loader unpacks (`FIELDS` order)."""
    return [getattr(self, field) for field in FIELDS]


def _integer(value: Any) -> int | None:
  """`value` as an int when it is an integer (Python, numpy, or an integral float)."""
  if isinstance(value, (bool, np.bool_)):
    return None
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real) and float(value).is_integer():
    return int(value)
  return None


def _text(value: Any) -> str | None:
  if isinstance(value, str):
    return value
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return None
  return None


def parse_datapoint(datapoint: Any, path: str | os.PathLike[str], record: str
                    ) -> CaptionedImage:
  """Check one decoded datapoint and return it as a `CaptionedImage`.

  Raises:
    DataError: naming `path` and `record`, for a wrong field count, type, shape or value.
  """
  def fail(problem: str, expected: str) -> DataError:
    return DataError.at(path, record, problem, expected)

  if not isinstance(datapoint, (list, tuple)) or len(datapoint) != len(FIELDS):
    size = f"{len(datapoint)} fields" if isinstance(datapoint, (list, tuple)) else (
        f"a {type(datapoint).__name__}")
    raise fail(f"is {size}", _EXPECTED_RECORD)
  values = dict(zip(FIELDS, datapoint, strict=True))
  arrays = {}
  for field, columns in (("image_feature_wp", None), ("image_target_wp", None),
                         ("image_location_wp", 4)):
    array = values[field]
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype.kind not in "fiu":
      found = (f"a {array.dtype} array of shape {list(array.shape)}"
               if isinstance(array, np.ndarray) else f"a {type(array).__name__}")
      raise fail(f"{field} is {found}", f"a numeric array [num_boxes, "
                 f"{columns or 'width'}] (msgpack_numpy-encoded)")
    if columns is not None and array.shape[1] != columns:
      raise fail(f"{field} has shape {list(array.shape)}", f"[num_boxes, {columns}]")
    arrays[field] = array
  rows = {field: array.shape[0] for field, array in arrays.items()}
  num_boxes = _integer(values["num_boxes"])
  if num_boxes is None or len(set(rows.values()) | {num_boxes}) != 1:
    raise fail(f"num_boxes is {values['num_boxes']!r} and the arrays have {rows} rows",
               "one row per box in each array")
  sizes = {field: _integer(values[field]) for field in ("image_h", "image_w")}
  bad = {field: values[field] for field, size in sizes.items() if size is None or size <= 0}
  if bad:
    raise fail(f"image size {bad} is not a positive integer", "image_h and image_w in pixels")
  boxes = arrays["image_location_wp"]
  if not np.isfinite(boxes).all() or (boxes[:, 2] < boxes[:, 0]).any() or (
      boxes[:, 3] < boxes[:, 1]).any():
    box = int(np.argmax(~np.isfinite(boxes).all(1) | (boxes[:, 2] < boxes[:, 0])
                        | (boxes[:, 3] < boxes[:, 1])))
    raise fail(f"box {box} of image_location_wp is {boxes[box].tolist()}",
               "finite x1, y1, x2, y2 pixel corners with x2 >= x1 and y2 >= y1")
  image_id = values["image_id"]
  image_id = _text(image_id) if not isinstance(image_id, numbers.Integral) else str(image_id)
  caption = _text(values["caption"])
  if image_id is None or caption is None:
    field = "image_id" if image_id is None else "caption"
    raise fail(f"{field} is a {type(values[field]).__name__}", "a UTF-8 string")
  return CaptionedImage(arrays["image_feature_wp"], arrays["image_target_wp"], boxes,
                        num_boxes, sizes["image_h"], sizes["image_w"], image_id, caption)


class ConcapLMDB:
  """Random access to the records of one corpus LMDB (a file or a directory).

  Holds only the path and the key list: the read-only environment is shared per process and
  reopened in a new one (as `features.FeatureLMDB` does), so readers survive fork and pickling.
  """

  def __init__(self, path: str | os.PathLike[str]) -> None:
    """Open `path` and read its key list.

    Raises:
      DataError: the file is missing, not an LMDB, truncated, or its key list is malformed.
    """
    self.path = os.fspath(path)
    if not os.path.exists(self.path):
      raise DataError.at(self.path, "LMDB", "does not exist",
                         "the tensorpack LMDB of the split (see `SPLIT_FILES`)")
    with _shared_environment(self.path).begin(write=False) as txn:
      listed = txn.get(KEYS_ENTRY)
      if listed is None:
        self._keys = [bytes(key) for key, _ in txn.cursor() if bytes(key) != KEYS_ENTRY]
      else:
        self._keys = self._parse_keys(listed)
        entries = txn.stat()["entries"] - 1
        if entries != len(self._keys):
          raise DataError.at(self.path, "key b'__keys__'", f"lists {len(self._keys)} keys but "
                             f"the database holds {entries} records", "one key per record")

  def _parse_keys(self, listed: bytes) -> list[bytes]:
    try:
      keys = wire.loads(listed)
    except wire.WireFormatError as error:
      raise DataError.at(self.path, "key b'__keys__'", str(error),
                         "a msgpack list of record keys") from None
    if not isinstance(keys, list) or not all(isinstance(key, (bytes, str)) for key in keys):
      raise DataError.at(self.path, "key b'__keys__'", f"holds a {type(keys).__name__}",
                         "a msgpack list of record keys (bytes)")
    return [key if isinstance(key, bytes) else key.encode() for key in keys]

  def __len__(self) -> int:
    return len(self._keys)

  def key(self, index: int) -> bytes:
    """The LMDB key of record `index`."""
    return self._keys[index]

  def raw(self, index: int) -> bytes:
    """The stored bytes of record `index`.

    Raises:
      DataError: the key is listed in `__keys__` but has no value.
    """
    key = self._keys[index]
    with _shared_environment(self.path).begin(write=False) as txn:
      value = txn.get(key)
    if value is None:
      raise DataError.at(self.path, f"record {key.decode(errors='replace')}",
                         "is listed in b'__keys__' but has no value", "a serialized record")
    return bytes(value)

  def __getitem__(self, index: int) -> CaptionedImage:
    """Record `index`, decoded and checked.

    Raises:
      DataError: naming this file and the record's key, for undecodable or malformed data.
    """
    if not -len(self) <= index < len(self):
      raise IndexError(f"{self.path}: record index {index} out of range [0, {len(self)})")
    where = f"record {self._keys[index].decode(errors='replace')}"
    try:
      datapoint = wire.loads(self.raw(index))
    except wire.WireFormatError as error:
      raise DataError.at(self.path, where, str(error), _EXPECTED_RECORD) from None
    return parse_datapoint(datapoint, self.path, where)

  def __iter__(self) -> Iterator[CaptionedImage]:
    for index in range(len(self)):
      yield self[index]


def read_captions(path: str | os.PathLike[str]) -> list[str]:
  """The captions of a caption file, in file order (the official `list(json.load(f).values())`).

  Raises:
    DataError: the file is missing, not JSON, not an object, or holds a non-string caption.
  """
  try:
    with open(path, encoding="utf-8") as handle:
      captions = json.load(handle)
  except FileNotFoundError:
    raise DataError.at(path, "caption file", "does not exist",
                       "a JSON object {image_id: caption}") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise DataError.at(path, "caption file", f"is not JSON ({error})",
                       "a JSON object {image_id: caption}") from None
  if not isinstance(captions, dict):
    raise DataError.at(path, "caption file", f"holds a JSON {type(captions).__name__}",
                       "a JSON object {image_id: caption}")
  for image_id, caption in captions.items():
    if not isinstance(caption, str):
      raise DataError.at(path, f"image id {image_id!r}", f"caption is {caption!r}", "a string")
  return list(captions.values())


def corpus_dir(release_dir: str | os.PathLike[str]) -> Path:
  """The folder holding the split files: `release_dir` itself or its `conceptual_caption/`
  (the official `--file_path` default is `data/conceptual_caption/`)."""
  root = Path(release_dir)
  for candidate in (root, root / "conceptual_caption", root / "datasets" / "conceptual_caption"):
    if any((candidate / lmdb_name).exists() for lmdb_name, _ in SPLIT_FILES.values()):
      return candidate
  return root


def split_files(release_dir: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
  """The (feature LMDB, caption file) of `split` in a corpus folder.

  Raises:
    ValueError: an unknown split.
    DataError: either file is missing.
  """
  if split not in SPLIT_FILES:
    raise ValueError(f"Conceptual Captions split {split!r}; expected one of {list(SPLIT_FILES)}")
  folder = corpus_dir(release_dir)
  files = tuple(folder / name for name in SPLIT_FILES[split])
  for file in files:
    if not file.exists():
      raise DataError.at(file, f"split {split}", "is missing",
                         f"{' and '.join(SPLIT_FILES[split])} in the corpus folder")
  return files[0], files[1]


def check_splits(splits: Sequence[str]) -> list[str]:
  """`splits` without repeats, each a known split (ValueError otherwise)."""
  unknown = [split for split in splits if split not in SPLIT_FILES]
  if unknown:
    raise ValueError(f"Conceptual Captions splits {unknown}; expected some of "
                     f"{list(SPLIT_FILES)}")
  return list(dict.fromkeys(splits))
