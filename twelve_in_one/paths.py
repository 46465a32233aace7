"""Locations: one path type, `etils.epath`, for local folders and Cloud Storage buckets.

Every location a user gives (workdir, prepared data, init checkpoint, vocabulary, outputs) goes
through `as_path`, so `gs://bucket/run` and `/data/run` take the same code paths; orbax and
TFDS use epath too. What object storage cannot do the way a disk does is handled here, once:

* **No rename, no append.** A Cloud Storage object appears whole when its upload finishes, so
  `write_text_atomically` writes remote files directly (readers never see half a file) and
  local ones through a temporary file and `os.replace`. Opening an object in append mode
  silently *replaces* it, so append-only logs are written to a local mirror and uploaded whole
  (`train/metrics_log.py`).
* **Local-only readers.** array_record's C++ reader opens only local files, so prepared data on
  a bucket is copied to a local cache before reading (`data/tfds_format.py`), and prepared
  data is built locally and then uploaded (`data/prepare.py`).
* **Clear errors.** `check_bucket` turns a missing or unreachable bucket into one line naming
  the location and the setting it came from, before any work starts.

This module imports no jax, so the data package and the model-free commands can use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any

from etils import epath

PathLike = str | os.PathLike[str]
CACHE_ENV = "TWELVE_IN_ONE_CACHE"


class LocationError(OSError):
  """A location cannot be used: a missing bucket, an unreachable store, a missing file."""


def is_remote(location: PathLike | epath.Path) -> bool:
  """Whether `location` names an object store (`gs://...`, `s3://...`) rather than a disk."""
  return "://" in os.fspath(location)


def as_path(location: PathLike | epath.Path) -> epath.Path:
  """`location` as an epath: remote ones as given, local ones absolute with `~` expanded."""
  text = os.fspath(location)
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def bucket_of(location: PathLike) -> str:
  """`gs://bucket/a/b` -> `gs://bucket`."""
  text = os.fspath(location)
  scheme, _, rest = text.partition("://")
  return f"{scheme}://{rest.split('/', 1)[0]}"


def check_bucket(location: PathLike, what: str) -> None:
  """Raises LocationError (one line) when `location`'s bucket does not exist or cannot be read.

  Local locations pass: their folders are created on demand. `what` names the setting the
  location came from, e.g. `--workdir` or `config.data.data_dir`.
  """
  if not location or not is_remote(location):
    return
  bucket = bucket_of(location)
  try:
    found = epath.Path(bucket).exists()
  except Exception as error:  # noqa: BLE001 - credentials, network, permissions: all one line
    raise LocationError(f"{what} {os.fspath(location)}: cannot reach bucket {bucket} "
                        f"({type(error).__name__}: {_first_line(error)})") from error
  if not found:
    raise LocationError(f"{what} {os.fspath(location)}: bucket {bucket} does not exist or "
                        "this machine's credentials cannot see it; create it "
                        f"(`gcloud storage buckets create {bucket}`) or fix the path")


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else "no message"


def write_text_atomically(path: PathLike | epath.Path, text: str) -> None:
  """Writes `text` so that a reader sees the old file or the new one, never a truncated one.

  Local: a temporary sibling and `os.replace`. Remote: one upload (an object appears whole).
  """
  write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: PathLike | epath.Path, data: bytes) -> None:
  """The bytes form of `write_text_atomically`."""
  target = as_path(path)
  if is_remote(target):
    target.write_bytes(data)
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=os.fspath(target.parent))
  try:
    with os.fdopen(handle, "wb") as out:
      out.write(data)
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, os.fspath(target))
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def _umask() -> int:
  current = os.umask(0)
  os.umask(current)
  return current


def files_under(root: epath.Path) -> list[epath.Path]:
  """Every file below `root` (recursively), sorted by path."""
  found: list[epath.Path] = []
  pending = [root]
  while pending:
    folder = pending.pop()
    for entry in folder.iterdir():
      if entry.is_dir():
        pending.append(entry)
      else:
        found.append(entry)
  return sorted(found, key=os.fspath)


def copy_tree(source: PathLike | epath.Path, destination: PathLike | epath.Path, *,
              last: Iterable[str] = ()) -> int:
  """Copies every file below `source` to the same relative path below `destination`.

  Files named in `last` (relative paths, e.g. a manifest) are copied after all others, so a
  reader that waits for them never sees a partial copy. Returns the bytes copied.
  """
  source, destination = as_path(source), as_path(destination)
  deferred = set(last)
  files = files_under(source)
  ordered = ([f for f in files if os.fspath(f.relative_to(source)) not in deferred] +
             [f for f in files if os.fspath(f.relative_to(source)) in deferred])
  copied = 0
  made: set[str] = set()
  for file in ordered:
    target = destination / os.fspath(file.relative_to(source))
    if os.fspath(target.parent) not in made:
      target.parent.mkdir(parents=True, exist_ok=True)
      made.add(os.fspath(target.parent))
    copy_file(file, target)
    copied += file.stat().length if is_remote(file) else os.path.getsize(os.fspath(file))
  return copied


def copy_file(source: epath.Path, target: epath.Path, chunk_bytes: int = 64 << 20) -> None:
  """Copies one file between any two locations, streaming in chunks (no whole-file buffer)."""
  if not is_remote(source) and not is_remote(target):
    shutil.copyfile(os.fspath(source), os.fspath(target))
    return
  with source.open("rb") as reader, target.open("wb") as writer:
    while chunk := reader.read(chunk_bytes):
      writer.write(chunk)


def remove_tree(root: PathLike | epath.Path) -> None:
  """Removes `root` and everything below it, if it exists."""
  path = as_path(root)
  if is_remote(path):
    if path.exists():
      path.rmtree()
    return
  shutil.rmtree(os.fspath(path), ignore_errors=True)


def cache_dir() -> epath.Path:
  """This machine's cache for copies of remote data: `$TWELVE_IN_ONE_CACHE`, else
  `~/.cache/twelve_in_one`."""
  return as_path(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "twelve_in_one"))


def local_mirror_of(location: PathLike) -> epath.Path:
  """The cache folder that holds this machine's copy of remote `location`."""
  scheme, _, rest = os.fspath(location).partition("://")
  return cache_dir() / scheme / rest.strip("/")


def describe(location: Any) -> str:
  """A location as shown to users: remote ones as given, local ones absolute."""
  return os.fspath(location) if is_remote(location) else os.path.abspath(os.fspath(location))


def forget_cached_listings(location: PathLike | epath.Path) -> None:
  """Drops this process's cached object listings at, under and above remote `location`.

  gcsfs keeps every listing for the life of the process and takes an object's size from it
  when opening the object, so a process that listed a folder reads objects another machine
  has replaced since as their old length (silently truncated or padded). Call this before
  reading objects that other processes may rewrite (manifests, mirrored datasets).
  """
  if not is_remote(location):
    return
  from etils.epath import backend  # noqa: PLC0415 - fsspec is only needed for remote paths
  filesystem = backend.fsspec_backend.fs(os.fspath(location))
  key = filesystem._strip_protocol(os.fspath(location)).rstrip("/")  # noqa: SLF001
  for cached in [name for name in filesystem.dircache if name.startswith(key + "/")]:
    filesystem.dircache.pop(cached, None)
  filesystem.invalidate_cache(os.fspath(location))
