"""One trainer per workdir: a second one refuses at once, naming the first's host and pid.

Two trainers writing one workdir would interleave their checkpoints and logs and each resume
from the other's steps. Process 0 of a run takes the lock (the other processes of a multi-host
job share the workdir by design) before anything is read from or written to the workdir, and
gives it back when the run ends, fails or is preempted.

* **Local folders**: `flock` on `<workdir>/.lock`, which holds the holder's host and pid. The
  kernel drops the lock when the process dies, SIGKILL included, so a crashed run never
  blocks the next one. The file is emptied on release and kept (deleting a lock file races
  with a process that has just opened it).
* **gs:// workdirs**: a lease object `<workdir>/lock.json` (host, pid, expiry), created only if
  absent (`ifGenerationMatch=0`) and renewed every `RENEW_S` by a background thread, each
  renewal conditional on the lease's last generation. A lease past its expiry, or one held
  by a process of this host that no longer exists (a VM restarted after preemption), is stale
  and is taken over with a one-line warning. Expiry compares the holder's clock with ours,
  so hosts are assumed to keep time within a few seconds (NTP on cloud VMs). A holder that
  loses its lease to another process stops before its next save (`check`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from twelve_in_one import paths

LOCAL_FILE = ".lock"
LEASE_FILE = "lock.json"
LEASE_S = 180.0      # a lease not renewed for this long is stale
RENEW_S = 30.0


class WorkdirBusyError(OSError):
  """Another trainer holds the workdir (or took it over from this one)."""


def _holder(since: float) -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(), "since": since}


def _number(value, default: float = 0.0) -> float:
  """A lease field as a number (`default` for a missing or garbled one)."""
  try:
    return float(value)
  except (TypeError, ValueError):
    return default


def _busy(workdir: str, holder: dict, detail: str = "") -> WorkdirBusyError:
  since = holder.get("since")
  started = (time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since))
             if isinstance(since, (int, float)) else "")
  return WorkdirBusyError(
      f"--workdir {workdir} is in use by another trainer: host {holder.get('host', '?')}, "
      f"pid {holder.get('pid', '?')}{started}{detail}; stop it first or use another --workdir")


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # someone else's process: it exists
    return True
  return True


class WorkdirLock:
  """The lock of one workdir; `acquire` raises WorkdirBusyError naming the holder."""

  def __init__(self, workdir: str):
    self.workdir = paths.describe(workdir)
    self._since = time.time()
    self._fd: int | None = None
    self._blob = None
    self._generation: int | None = None
    self._lost: str | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  # ---------------------------------------------------------------- local: flock
  def _acquire_local(self) -> None:
    import fcntl  # noqa: PLC0415 - POSIX only, and only for local workdirs
    path = os.path.join(self.workdir, LOCAL_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
      os.close(fd)
      try:
        holder = json.loads(text)
      except json.JSONDecodeError:
        holder = {}
      raise _busy(self.workdir, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder(self._since)).encode(), 0)
    self._fd = fd

  def _release_local(self) -> None:
    import fcntl  # noqa: PLC0415
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      os.close(fd)

  # ---------------------------------------------------------------- gs://: a lease object
  def _lease_body(self) -> str:
    return json.dumps(dict(_holder(self._since), expires=time.time() + LEASE_S))

  def _acquire_remote(self) -> None:
    from google.api_core import exceptions  # noqa: PLC0415 - gcsfs' own dependencies
    from google.auth import exceptions as auth_exceptions  # noqa: PLC0415
    try:
      self._take_lease()
    except (exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as error:
      # Credentials, permissions, the network: one line naming the lease, as for any location.
      text = str(error).strip().splitlines()[0][:300] if str(error).strip() else "no message"
      raise paths.LocationError(f"--workdir {self.workdir}: cannot take its lease {LEASE_FILE} "
                                f"({type(error).__name__}: {text})") from error
    self._thread = threading.Thread(target=self._renew, name="workdir-lease", daemon=True)
    self._thread.start()

  def _take_lease(self) -> None:
    """Creates the lease, or takes over a stale one; raises WorkdirBusyError otherwise."""
    from google.api_core import exceptions  # noqa: PLC0415
    from google.cloud import storage  # noqa: PLC0415
    bucket, _, prefix = self.workdir.partition("://")[2].partition("/")
    name = f"{prefix.strip('/')}/{LEASE_FILE}" if prefix.strip("/") else LEASE_FILE
    handle = storage.Client().bucket(bucket)
    blob = handle.blob(name)
    for _ in range(3):   # a lease released or taken over between our calls: look again
      try:
        blob.upload_from_string(self._lease_body(), content_type="application/json",
                                if_generation_match=0)
        break
      except exceptions.PreconditionFailed:
        pass
      current = handle.get_blob(name)
      if current is None:
        continue
      try:
        holder = json.loads(current.download_as_text(if_generation_match=current.generation))
      except (exceptions.PreconditionFailed, exceptions.NotFound):
        continue
      except json.JSONDecodeError:
        holder = {"expires": 0}   # an unreadable lease protects nothing
      expires = _number(holder.get("expires"))
      expired = expires < time.time()
      pid = int(_number(holder.get("pid"), -1))
      dead = (holder.get("host") == socket.gethostname() and pid > 0 and pid != os.getpid()
              and not _process_exists(pid))
      if not (expired or dead):
        raise _busy(self.workdir, holder, " (its lease runs until "
                    f"{time.strftime('%H:%M:%S', time.localtime(expires))})")
      try:
        blob.upload_from_string(self._lease_body(), content_type="application/json",
                                if_generation_match=current.generation)
      except exceptions.PreconditionFailed:
        continue
      logging.warning("--workdir %s: taking over the stale lease of host %s, pid %s (%s)",
                      self.workdir, holder.get("host", "?"), holder.get("pid", "?"),
                      "expired" if expired else "that process is gone")
      break
    else:
      raise WorkdirBusyError(f"--workdir {self.workdir}: its lease {LEASE_FILE} keeps changing; "
                             "another trainer is starting there")
    self._blob, self._generation = blob, blob.generation

  def _renew(self) -> None:
    from google.api_core import exceptions  # noqa: PLC0415
    expires = time.time() + LEASE_S
    while not self._stop.wait(RENEW_S):
      try:
        self._blob.upload_from_string(self._lease_body(), content_type="application/json",
                                      if_generation_match=self._generation)
        self._generation, expires = self._blob.generation, time.time() + LEASE_S
      except (exceptions.PreconditionFailed, exceptions.NotFound):
        self._lost = "another trainer took over its lease"
        return
      except Exception as error:  # noqa: BLE001 - a network hiccup: retry until the lease ends
        if time.time() > expires:
          self._lost = f"its lease expired (renewing failed: {type(error).__name__})"
          return
        logging.warning("--workdir %s: renewing the lease failed (%s); retrying", self.workdir,
                        error)

  def _release_remote(self) -> None:
    from google.api_core import exceptions  # noqa: PLC0415
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=60)
    if self._lost is None:
      try:
        self._blob.delete(if_generation_match=self._generation)
      except (exceptions.PreconditionFailed, exceptions.NotFound):
        pass   # taken over meanwhile: the lease is no longer ours to delete
    self._blob = None

  # ---------------------------------------------------------------- either
  def acquire(self) -> WorkdirLock:
    """Takes the workdir (which must exist); raises WorkdirBusyError naming the holder."""
    if paths.is_remote(self.workdir):
      self._acquire_remote()
    else:
      self._acquire_local()
    return self

  def check(self) -> None:
    """Raises WorkdirBusyError when this process lost the workdir (call before each save)."""
    if self._lost is not None:
      raise WorkdirBusyError(f"--workdir {self.workdir}: {self._lost}; stopping without "
                             "saving")

  def release(self) -> None:
    """Gives the workdir back (idempotent)."""
    if self._fd is not None:
      self._release_local()
    elif self._blob is not None:
      self._release_remote()

  def __enter__(self) -> WorkdirLock:
    """`with WorkdirLock(w).acquire() as lock:` gives it back however the block ends."""
    return self

  def __exit__(self, *exc) -> None:
    self.release()


class _NoLock:
  """What processes other than 0 hold: nothing to take, check or give back."""

  def check(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    pass


_holds = [0]   # hold() calls so far; every process of a job makes the same sequence of calls


def hold(workdir: str, *, process_index: int = 0, process_count: int = 1):
  """Takes the workdir's lock in process 0, and makes every process of the job fail alike.

  Returns a context manager holding the lock (process 0) or nothing (the others). Process 0
  tells the others through the coordination service whether it got the lock, so a refused
  multi-host start stops everywhere at once instead of leaving the others waiting at the
  first barrier.
  """
  _holds[0] += 1
  key = f"twelve_in_one_workdir_lock_{_holds[0]}"
  if process_count == 1:
    return WorkdirLock(workdir).acquire()
  from jax._src import distributed  # noqa: PLC0415 - the coordination service's store
  client = distributed.global_state.client
  if process_index != 0:
    refusal = client.blocking_key_value_get(key, 30 * 60 * 1000)
    if refusal:
      raise WorkdirBusyError(refusal)
    return _NoLock()
  try:
    lock = WorkdirLock(workdir).acquire()
  except OSError as error:
    client.key_value_set(key, str(error) or type(error).__name__)
    raise
  client.key_value_set(key, "")
  return lock
