"""Region-feature readers for the 12-in-1 release formats.

Three on-disk formats hold the same content: per image, the detector boxes
(x1, y1, x2, y2 in original-image pixels) and one feature vector per box.

* :class:`FeatureLMDB` (this module): the release LMDB written by the official
  ``script/convert_to_lmdb.py``; the ``*_gt_*`` GT-box LMDBs use it too.
* :class:`BottomUpTSV`: bottom-up-attention TSV files.
* :class:`NpyFeatureFolder`: per-image ``.npy``/``.npz`` files from the
  official ``script/extract_features.py``.

All three expose the same interface (``reader[image_id] -> ImageFeatures``,
``image_id in reader``, ``len(reader)``, ``reader.keys()``); this module is
the one place to import them from, together with :func:`pad_regions` and
:func:`write_feature_lmdb`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping
from typing import Any

import lmdb
import numpy as np

from twelve_in_one.data.errors import DataError
from twelve_in_one.data.feature_files import BottomUpTSV, NpyFeatureFolder
from twelve_in_one.data.regions import (
    DEFAULT_BOX_CLIP,
    DEFAULT_BOX_TOLERANCE,
    DEFAULT_FEATURE_DIM,
    FeatureReader,
    ImageFeatures,
    ImageId,
    build_image_features,
    normalize_image_id,
    pad_regions,
)

__all__ = [
    "DEFAULT_BOX_CLIP",
    "DEFAULT_BOX_TOLERANCE",
    "DEFAULT_FEATURE_DIM",
    "DEFAULT_LMDB_MAP_SIZE",
    "KEYS_ENTRY",
    "BottomUpTSV",
    "FeatureLMDB",
    "FeatureReader",
    "ImageFeatures",
    "ImageId",
    "NpyFeatureFolder",
    "build_image_features",
    "close_feature_lmdb",
    "normalize_image_id",
    "pad_regions",
    "write_feature_lmdb",
]

# map_size of the official convert_to_lmdb.py (1 TiB, sparse on disk).
DEFAULT_LMDB_MAP_SIZE = 1 << 40
# Key under which convert_to_lmdb.py stores the pickled list of image-id keys.
KEYS_ENTRY = b"keys"

# py-lmdb refuses to open one environment twice in a process, and several
# tasks read the same file (VQA and COCO retrieval share the COCO LMDB), so
# all readers of a path share one read-only environment. A forked child must
# not use its parent's handle: it closes the inherited one and opens its own.
_ENVIRONMENTS: dict[str, tuple[int, lmdb.Environment]] = {}


def _shared_environment(path: str) -> lmdb.Environment:
  """The process's read-only environment of ``path``, opened on first use."""
  key = os.path.realpath(path)
  cached = _ENVIRONMENTS.pop(key, None)
  if cached is not None:
    owner_pid, environment = cached
    if owner_pid == os.getpid():
      _ENVIRONMENTS[key] = cached
      return environment
    environment.close()
  try:
    # Read-only without locking, like the official reader.
    environment = lmdb.open(path, subdir=os.path.isdir(path), readonly=True, lock=False,
                            readahead=False, meminit=False)
  except lmdb.Error as error:
    raise DataError.at(path, "LMDB environment", f"cannot be opened ({error})",
                       "a directory holding data.mdb") from error
  try:
    _check_complete(path, environment)
  except DataError:
    environment.close()
    raise
  _ENVIRONMENTS[key] = (os.getpid(), environment)
  return environment


def _check_complete(path: str, environment: lmdb.Environment) -> None:
  """Raise DataError if the data file is shorter than its meta page says.

  LMDB memory-maps the file and reads pages in place: reading a page past the end of a
  truncated file (an interrupted copy or download) kills the process with SIGBUS, exit 135,
  with no message. Opening reads only the two meta pages, with read(2); the newer of them
  holds the last page number in use, so the file must reach (last_pgno + 1) * page size.
  """
  data_file = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
  size = os.path.getsize(data_file)
  needed = (environment.info()["last_pgno"] + 1) * environment.stat()["psize"]
  if size < needed:
    raise DataError.at(data_file, "LMDB data file", f"is {size} bytes but its meta page "
                       f"uses pages up to byte {needed} (truncated: an interrupted copy or "
                       "download?)", "the complete file; copy or download it again")


def close_feature_lmdb(path: str | os.PathLike[str]) -> None:
  """Close the shared read environment of ``path``; readers reopen it on next use.

  Needed before writing to (or deleting) a feature LMDB that this process
  has read.
  """
  cached = _ENVIRONMENTS.pop(os.path.realpath(os.fspath(path)), None)
  if cached is not None and cached[0] == os.getpid():
    cached[1].close()


class FeatureLMDB(FeatureReader):
  """Reader of the release feature LMDB (and of the GT-box LMDBs).

  The reader holds no open handle, only the path and the id index: the
  environment is shared per process and reopened in each new process, so
  the reader survives ``fork`` and pickling (data-loader workers).
  """

  def __init__(self, path: str | os.PathLike[str], *,
               feature_dim: int = DEFAULT_FEATURE_DIM,
               box_tolerance: float = DEFAULT_BOX_TOLERANCE,
               box_clip: float = DEFAULT_BOX_CLIP) -> None:
    """Open ``path`` (an LMDB directory or data file) and index its ids once.

    ``box_tolerance`` and ``box_clip``: see :func:`build_image_features`.
    """
    super().__init__(path, feature_dim, box_tolerance, box_clip)
    with _shared_environment(self.path).begin(write=False) as txn:
      keys_blob = txn.get(KEYS_ENTRY)
    if keys_blob is None:
      raise DataError.at(self.path, "key b'keys'", "missing: the conversion "
                         "(script/convert_to_lmdb.py writes b'keys' last) was "
                         "interrupted; re-run it",
                         "a pickled list of image-id byte strings under b'keys'")
    try:
      raw_keys = pickle.loads(keys_blob)
    except Exception as error:
      raise DataError.at(self.path, "key b'keys'", f"cannot be unpickled ({error})",
                         "a pickled list of image-id byte strings") from error
    if not isinstance(raw_keys, (list, tuple)):
      raise DataError.at(self.path, "key b'keys'", f"holds a {type(raw_keys).__name__}",
                         "a pickled list of image-id byte strings")
    # The official reader calls list.index on every access (O(N)); a dict
    # built once makes each lookup O(1).
    self._key_of: dict[str, bytes] = {}
    for raw_key in raw_keys:
      key_bytes = raw_key if isinstance(raw_key, bytes) else str(raw_key).encode()
      image_id = key_bytes.decode("utf-8")
      if image_id not in self._key_of:
        self._ids.append(image_id)
        self._key_of[image_id] = key_bytes

  def close(self) -> None:
    """Close the shared environment of this file (see :func:`close_feature_lmdb`)."""
    close_feature_lmdb(self.path)

  def _has(self, image_id: str) -> bool:
    return image_id in self._key_of

  def _read_raw(self, image_id: str) -> tuple[Any, Any, Any, Any, str]:
    record = f"image id {image_id!r}"
    with _shared_environment(self.path).begin(write=False) as txn:
      blob = txn.get(self._key_of[image_id])
    if blob is None:
      raise DataError.at(self.path, record, "listed in b'keys' but has no record",
                         "a pickled feature dict under str(image_id).encode()")
    try:
      item = pickle.loads(blob)
    except Exception as error:
      raise DataError.at(self.path, record, f"cannot be unpickled ({error})",
                         "a pickled feature dict") from error
    missing = [name for name in ("image_h", "image_w", "boxes", "features")
               if not isinstance(item, Mapping) or name not in item]
    if missing:
      raise DataError.at(self.path, record, f"record lacks fields {missing}",
                         "image_id, image_h, image_w, num_boxes, boxes, features")
    return item["features"], item["boxes"], item["image_h"], item["image_w"], self.path


def write_feature_lmdb(
    path: str | os.PathLike[str],
    records: Iterable[Mapping[str, Any]],
    *,
    map_size: int = DEFAULT_LMDB_MAP_SIZE,
) -> int:
  """Write records in the release LMDB format, like ``convert_to_lmdb.py``.

  Each record needs ``image_id``, ``image_h``, ``image_w``, ``boxes``
  [N, 4] and ``features`` [N, D]; ``num_boxes`` defaults to N. Records are
  stored pickled under ``str(image_id).encode()`` and the ``b"keys"`` list is
  written last, in the same transaction, as the official script does.

  Returns:
    The number of records written.
  """
  close_feature_lmdb(path)
  key_list: list[bytes] = []
  env = lmdb.open(os.fspath(path), map_size=map_size)
  try:
    with env.begin(write=True) as txn:
      for record in records:
        features = np.asarray(record["features"], dtype=np.float32)
        item = {
            "image_id": record["image_id"],
            "image_h": record["image_h"],
            "image_w": record["image_w"],
            "num_boxes": record.get("num_boxes", features.shape[0]),
            "boxes": np.asarray(record["boxes"], dtype=np.float32),
            "features": features,
        }
        key = str(record["image_id"]).encode()
        key_list.append(key)
        txn.put(key, pickle.dumps(item))
      txn.put(KEYS_ENTRY, pickle.dumps(key_list))
  finally:
    env.close()
  return len(key_list)
