"""Prepared data on Cloud Storage: upload a locally built folder, mirror a remote one locally.

array_record's C++ reader and writer open only local files (given a gs:// path they wait
forever), so prepared data never goes to or comes from a bucket record by record:

* **Publishing** (`publish`, used by `prepare`): the dataset is built in a local folder and
  uploaded whole. The old manifest is deleted first, so the old dataset stops looking complete
  before any of its files change; then the old folder is removed and the new files uploaded,
  the manifest last. A bucket has no rename, so this is the only order in which a reader that
  trusts the manifest never sees a mix: an interrupted upload leaves files without a manifest,
  which `open_prepared` refuses and the next `prepare` replaces.
* **Mirroring** (`mirror`, used by `open_prepared`): a remote task folder is copied to this
  machine's cache (`paths.local_mirror_of`) and read there. The copy is reused while its
  manifest has the same bytes as the remote one (every rebuild writes a new manifest: a new
  fingerprint or creation time). A new copy is downloaded into a hidden sibling, manifest last,
  checked against the manifest read before the download (a rebuild that ran meanwhile is caught
  here), its files checked in full against the manifest's sizes, record counts and checksums,
  and renamed into place. A reused copy is checked cheaply first (sizes and record counts): a
  damaged one (a truncated file) is downloaded again, with a one-line warning. Processes on one host take a lock so only one downloads; the
  rename also resolves a race without it (the loser uses the winner's copy).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from etils import epath

from twelve_in_one import paths
from twelve_in_one.data.errors import DataError


def read_manifest_bytes(folder: epath.Path, manifest: str) -> bytes | None:
  """The bytes of `folder/manifest` as stored now, or None when there is none.

  Forgets this process's cached listings first: another machine may have rebuilt the folder.

  Raises:
    paths.LocationError: the store cannot be read (credentials, network), in one line.
  """
  paths.forget_cached_listings(folder)
  path = folder / manifest
  try:
    return path.read_bytes()
  except FileNotFoundError:
    return None
  except Exception as error:  # noqa: BLE001 - credentials, network, permissions: all one line
    first_line = (str(error).strip() or "no message").splitlines()[0][:300]
    raise paths.LocationError(f"{os.fspath(path)}: cannot be read ({type(error).__name__}: "
                              f"{first_line})") from error


def publish(build_dir: Path, destination: epath.Path, manifest: str) -> int:
  """Uploads local `build_dir` to remote `destination`, replacing it; returns the bytes sent.

  The order (old manifest, old folder, new files, new manifest) is explained in the module
  docstring; `build_dir` is left for the caller to delete.
  """
  paths.forget_cached_listings(destination)
  old_manifest = destination / manifest
  if old_manifest.exists():
    old_manifest.unlink()
  paths.remove_tree(destination)
  return paths.copy_tree(build_dir, destination, last=[manifest])


def mirror(source: epath.Path, manifest_bytes: bytes, manifest: str,
           verify: Callable[[Path, bool], None] | None = None) -> Path:
  """A local copy of remote folder `source`, whose manifest has bytes `manifest_bytes`.

  Reuses `paths.local_mirror_of(source)` when its manifest matches and `verify(copy, False)`
  passes; a copy that fails it (a truncated or deleted file) is set aside with a one-line
  warning and downloaded again. A new copy must pass `verify(copy, True)` (the full check)
  before it is put in place. Logs one line with the bytes copied and the seconds taken.

  Raises:
    DataError: `source` changed while it was being copied (a prepare is rewriting it), or the
      new copy fails `verify` (the bucket's file is damaged, or the transfer failed).
  """
  local = Path(os.fspath(paths.local_mirror_of(source)))
  if _manifest_of(local, manifest) == manifest_bytes and _intact(local, verify, warn=False):
    return local
  local.parent.mkdir(parents=True, exist_ok=True)
  with _host_lock(local.parent / f".{local.name}.lock"):
    if _manifest_of(local, manifest) == manifest_bytes:
      if _intact(local, verify, warn=True):   # another process just copied it
        return local
      # Set the damaged copy aside (removed below with the other leftovers), so that
      # `install` does not keep it for having the same manifest.
      local.rename(local.parent / f".{local.name}.old-{uuid.uuid4().hex[:8]}")
    remove_leftovers(local.parent, local.name)
    incoming = local.parent / f".{local.name}.incoming-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
      start = time.perf_counter()
      copied = paths.copy_tree(source, incoming, last=[manifest])
      seconds = time.perf_counter() - start
      if _manifest_of(incoming, manifest) != manifest_bytes:
        raise DataError.at(source, "prepared dataset", "changed while it was being copied to "
                           f"{local} (is a prepare rewriting it?)", "it to stay unchanged; "
                           "retry once that prepare has finished")
      if verify is not None:
        try:
          verify(incoming, True)
        except DataError as error:
          raise DataError(f"{error} (found in the copy just downloaded to this machine: the "
                          "bucket's file is damaged or the transfer failed)") from None
      install(incoming, local, manifest)
    finally:
      shutil.rmtree(incoming, ignore_errors=True)
  logging.info("copied %s to %s: %.1f MB in %.1f s (%.0f MB/s)", os.fspath(source), local,
               copied / 1e6, seconds, copied / 1e6 / max(seconds, 1e-9))
  return local


def _intact(local: Path, verify: Callable[[Path, bool], None] | None, warn: bool) -> bool:
  """Whether the local copy passes the cheap check; logs why not when `warn`."""
  if verify is None:
    return True
  try:
    verify(local, False)
  except DataError as error:
    if warn:
      logging.warning("%s; downloading the dataset again", error)
    return False
  return True


def install(incoming: Path, local: Path, manifest: str) -> None:
  """Moves the complete copy `incoming` to `local`, replacing an older copy there.

  If another process has put a copy with the same manifest in place meanwhile, keeps that
  one (the caller deletes `incoming`).
  """
  wanted = _manifest_of(incoming, manifest)
  old = local.parent / f".{local.name}.old-{uuid.uuid4().hex[:8]}"
  if local.exists():
    if _manifest_of(local, manifest) == wanted:
      return
    local.rename(old)
  try:
    incoming.rename(local)
  except OSError:
    # Someone renamed their copy in between; theirs is as good if it is the same dataset.
    if _manifest_of(local, manifest) != wanted:
      raise
  finally:
    shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(folder: Path, name: str) -> None:
  """Removes `.<name>.incoming-<pid>-*` copies of processes that are gone, and `.old-*`."""
  for path in folder.glob(f".{name}.*"):
    kind, _, rest = path.name[len(name) + 2:].partition("-")
    if kind == "incoming":
      pid = rest.split("-")[0]
      if not pid.isdigit() or _running(int(pid)):
        continue
    elif kind != "old":
      continue
    shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _manifest_of(folder: Path, manifest: str) -> bytes | None:
  try:
    return (folder / manifest).read_bytes()
  except (FileNotFoundError, NotADirectoryError):
    return None


@contextlib.contextmanager
def _host_lock(path: Path) -> Iterator[None]:
  """An exclusive lock among this host's processes (released by the kernel if one dies)."""
  with open(path, "a+b") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)
