"""Writing a Conceptual Captions corpus in the layout the official pretraining loader reads.

No script that builds `training_feat_all.lmdb` was released; this writes what tensorpack
0.9.4's `LMDBSerializer.save(dataflow, path)` writes for a dataflow of `FIELDS` datapoints:

* one LMDB data file at `path` (`subdir=False`, as tensorpack opens a path that is not an
  existing directory), records under the keys `b"00000000"`, `b"00000001"`, ... and, written
  last, the msgpack list of those keys under `b"__keys__"`;
* each value `wire.dumps(datapoint)`: msgpack with msgpack_numpy's array maps.

A corpus folder also holds the caption file of each split, a JSON object `{image_id: caption}`
(`write_split`). `release.ConcapLMDB` reads both back, and so does the official loader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import lmdb
import numpy as np

from twelve_in_one.data.concap import wire
from twelve_in_one.data.concap.release import (
  FIELDS,
  KEYS_ENTRY,
  SPLIT_FILES,
  CaptionedImage,
)
from twelve_in_one.data.features import DEFAULT_LMDB_MAP_SIZE, close_feature_lmdb

# tensorpack commits every `write_frequency` (5000) records.
_COMMIT_EVERY = 5000


def record_key(index: int) -> bytes:
  """The key tensorpack stores record `index` under (`'{:08}'.format(index)`)."""
  return f"{index:08}".encode("ascii")


def _checked(record: CaptionedImage, index: int) -> list[object]:
  """The datapoint of `record`, with its arrays as float32 and its scalars as Python values."""
  if not isinstance(record, CaptionedImage):
    raise TypeError(f"record {index}: a {type(record).__name__}; expected a CaptionedImage")
  arrays = [np.ascontiguousarray(getattr(record, field), np.float32) for field in FIELDS[:3]]
  rows = {array.shape[0] for array in arrays} | {int(record.num_boxes)}
  if len(rows) != 1 or any(array.ndim != 2 for array in arrays) or arrays[2].shape[1] != 4:
    raise ValueError(f"record {index} (image {record.image_id!r}): arrays of shapes "
                     f"{[list(array.shape) for array in arrays]} with num_boxes "
                     f"{record.num_boxes}; expected [num_boxes, F], [num_boxes, C], "
                     "[num_boxes, 4]")
  return [*arrays, int(record.num_boxes), int(record.image_h), int(record.image_w),
          str(record.image_id), str(record.caption)]


def write_concap_lmdb(path: str | os.PathLike[str], records: Iterable[CaptionedImage], *,
                      overwrite: bool = False) -> int:
  """Write `records` as a tensorpack-serialized LMDB data file at `path`; returns the count.

  Arrays are written as float32 (the detector's output type), `num_boxes`, `image_h` and
  `image_w` as Python ints, `image_id` and `caption` as strings.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False (tensorpack refuses it too).
    ValueError: a record's arrays disagree with each other or with `num_boxes`.
  """
  path = os.fspath(path)
  if os.path.exists(path):
    if not overwrite:
      raise FileExistsError(f"{path}: LMDB file exists; pass overwrite=True to replace it")
    close_feature_lmdb(path)
    for stale in (path, path + "-lock"):
      if os.path.isfile(stale):
        os.remove(stale)
  # meminit (LMDB's default) zeroes unused page bytes, so equal records give equal files.
  environment = lmdb.open(path, subdir=False, map_size=DEFAULT_LMDB_MAP_SIZE, readonly=False,
                          map_async=True)
  count = 0
  try:
    txn = environment.begin(write=True)
    try:
      for count, record in enumerate(records, start=1):
        txn.put(record_key(count - 1), wire.dumps(_checked(record, count - 1)))
        if count % _COMMIT_EVERY == 0:
          txn.commit()
          txn = environment.begin(write=True)
      txn.commit()
    except BaseException:
      txn.abort()
      raise
    with environment.begin(write=True) as keys_txn:
      keys_txn.put(KEYS_ENTRY, wire.dumps([record_key(index) for index in range(count)]))
    environment.sync()
  finally:
    environment.close()
    # The lock file holds this process's reader table, not data: readers open the file
    # without locking (as the official loader does), and equal corpora give equal folders.
    if os.path.isfile(path + "-lock"):
      os.remove(path + "-lock")
  return count


def write_captions(path: str | os.PathLike[str], captions: Mapping[str, str]) -> None:
  """Write a caption file: the JSON object `{image_id: caption}` in `captions`' order."""
  with open(path, "w", encoding="utf-8") as handle:
    json.dump({str(image_id): str(caption) for image_id, caption in captions.items()}, handle)


def write_split(corpus_dir: str | os.PathLike[str], split: str,
                records: Iterable[CaptionedImage], *, captions: Mapping[str, str] | None = None,
                overwrite: bool = False) -> tuple[Path, Path]:
  """Write one split of a corpus folder: its feature LMDB and its caption file.

  Args:
    corpus_dir: the folder (`train_concap.py --file_path`); created if missing.
    split: "train" or "val" (file names from `release.SPLIT_FILES`).
    records: the split's records, in order.
    captions: the caption file's content; by default each record's `{image_id: caption}`.
    overwrite: replace existing files.

  Returns:
    The paths of the LMDB file and the caption file.
  """
  if split not in SPLIT_FILES:
    raise ValueError(f"Conceptual Captions split {split!r}; expected one of {list(SPLIT_FILES)}")
  folder = Path(corpus_dir)
  folder.mkdir(parents=True, exist_ok=True)
  lmdb_path, caption_path = (folder / name for name in SPLIT_FILES[split])
  if caption_path.exists() and not overwrite:
    raise FileExistsError(f"{caption_path}: caption file exists; pass overwrite=True")
  gathered: dict[str, str] = {}

  def remember(stream: Iterable[CaptionedImage]) -> Iterable[CaptionedImage]:
    for record in stream:
      gathered.setdefault(str(record.image_id), str(record.caption))
      yield record

  write_concap_lmdb(lmdb_path, remember(records), overwrite=overwrite)
  write_captions(caption_path, gathered if captions is None else captions)
  return lmdb_path, caption_path
