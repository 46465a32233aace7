"""What a prepared dataset's files should look like, recorded in its manifest and checked.

`prepare` records, for every file of a task folder but the manifest itself, its size in bytes,
its SHA-256 and, for array_record shards, its record count (`describe_files`). Those entries
are the manifest's `files` and are checked:

* **cheaply** (`check_files`, sizes and record counts) by `prepare` before it answers "already
  prepared", by `open_prepared` whenever training or evaluation opens the data, and on a
  bucket mirror before it is reused. A record count comes from the shard's footer and index,
  not from reading the records; a truncated shard already fails the size check, and a shard
  rewritten to the same size with other records fails the count.
* **fully** (`checksums=True`, every byte hashed) on a mirror right after its download, and by
  `prepare --verify_checksums`. Hashing runs at about 2 GB/s, which is small next to building
  (reading the LMDBs, serializing records) but too slow to repeat on every open.

A mismatch raises one-line `DataError`s naming the damaged file; `prepare` logs it and rebuilds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from array_record.python import array_record_module
from etils import epath

from twelve_in_one import paths
from twelve_in_one.data.errors import DataError

# Shards are named `<name>-<split>.array_record-<i>-of-<n>` (tfds_format.FILE_TEMPLATE).
SHARD_MARKER = ".array_record-"
# Only the footer and the index are read; no readahead of record data.
_COUNT_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
_FIX = "the file as prepare wrote it; re-run prepare (it rebuilds damaged data)"


def _sha256(path: Path, chunk_bytes: int = 16 << 20) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    while chunk := handle.read(chunk_bytes):
      digest.update(chunk)
  return digest.hexdigest()


def count_records(path: Path) -> int | None:
  """The record count of an array_record file from its footer, or None if it is unreadable."""
  try:
    reader = array_record_module.ArrayRecordReader(os.fspath(path), _COUNT_OPTIONS)
  except RuntimeError:        # too short, or no valid footer
    return None
  try:
    count = reader.num_records()
    return count if reader.ok() else None
  finally:
    try:
      reader.close()
    except RuntimeError:      # a damaged file reports its error again on close
      pass


def describe_files(folder: Path, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
  """`{relative path: {bytes, sha256[, records]}}` for every file below local `folder`.

  Files whose relative path is in `exclude` (the manifest) are left out.
  """
  files: dict[str, dict[str, Any]] = {}
  for path in sorted(folder.rglob("*")):
    relative = path.relative_to(folder).as_posix()
    if not path.is_file() or relative in exclude:
      continue
    entry: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    if SHARD_MARKER in path.name:
      count = count_records(path)
      if count is None:
        raise DataError.at(path, "array_record shard", "cannot be read right after writing it",
                           "a readable shard (is the disk full or failing?)")
      entry["records"] = count
    files[relative] = entry
  return files


def check_files(folder: Path, files: Mapping[str, Mapping[str, Any]], *,
                shown_as: Path | epath.Path | None = None, checksums: bool = False) -> None:
  """Check the files below local `folder` against the manifest's `files` entries.

  Args:
    folder: the local task folder.
    files: the manifest's `files`.
    shown_as: the folder named in errors (default `folder`), e.g. the gs:// source of a mirror.
    checksums: also hash every file and compare its SHA-256 (reads every byte).

  Raises:
    DataError: the first file that is missing, has another size, record count or checksum.
  """
  shown = folder if shown_as is None else shown_as
  for relative, expected in sorted(files.items()):
    path = folder / relative
    where = shown / relative
    try:
      size = path.stat().st_size
    except FileNotFoundError:
      raise DataError.at(where, "prepared file", "is missing", _FIX) from None
    if size != expected["bytes"]:
      raise DataError.at(where, "prepared file", f"is {size} bytes but prepare wrote "
                         f"{expected['bytes']} (truncated or overwritten)", _FIX)
    if "records" in expected:
      count = count_records(path)
      if count != expected["records"]:
        found = "cannot be read as array_record" if count is None else f"holds {count} records"
        raise DataError.at(where, "prepared file", f"{found} but prepare wrote "
                           f"{expected['records']}", _FIX)
    if checksums and _sha256(path) != expected["sha256"]:
      raise DataError.at(where, "prepared file", "has another SHA-256 than prepare recorded "
                         "(its bytes changed)", _FIX)


def check_remote_sizes(location: epath.Path, files: Mapping[str, Mapping[str, Any]]) -> None:
  """Check the sizes of a bucket folder's files against the manifest (one listing, no reads).

  Record counts need a local copy; `open_prepared` checks them on the mirror.

  Raises:
    DataError: the first file that is missing or has another size.
  """
  sizes = {}
  for path in paths.files_under(location):
    sizes[os.fspath(path.relative_to(location)).replace(os.sep, "/")] = path.stat().length
  for relative, expected in sorted(files.items()):
    where = location / relative
    if relative not in sizes:
      raise DataError.at(where, "prepared file", "is missing", _FIX)
    if sizes[relative] != expected["bytes"]:
      raise DataError.at(where, "prepared file", f"is {sizes[relative]} bytes but prepare "
                         f"wrote {expected['bytes']} (truncated or overwritten)", _FIX)
