"""Host memory behaviour of a training process on Linux/glibc: huge pages and trimming.

XLA:CPU allocates every executable's temporaries afresh on each call and frees them after.
glibc serves allocations that large with `mmap` and returns them with `munmap`, so each base
training step at batch 8 touched ~1.3 GiB of brand-new 4 KiB pages: ~330,000 page faults and
1-13% of the step (measured, BENCHMARKS.md). Asking glibc to back its memory with
transparent huge pages (the `glibc.malloc.hugetlb=1` tunable, glibc >= 2.35, honoured where
THP is `madvise` or `always`) makes that ~4,000 faults. glibc reads its tunables only when a
process starts, so the `twelve-in-one` command re-executes itself once with the tunable set.

Opt out with `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` (any explicit hugetlb setting is kept).
Nothing here changes a computed value; it only changes how memory pages are mapped.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Mapping, Sequence

HUGETLB = "glibc.malloc.hugetlb"


def _is_glibc_linux() -> bool:
  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def huge_pages_env(environ: Mapping[str, str]) -> dict[str, str] | None:
  """`environ` with glibc's huge-page tunable added, or None when nothing needs to change
  (the tunable, on or off, is already set)."""
  tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
  if any(t.split("=", 1)[0] == HUGETLB for t in tunables):
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join(tunables + [f"{HUGETLB}=1"])
  return env


def reexec_with_huge_pages(argv: Sequence[str] | None = None) -> None:
  """Re-executes this process with the huge-page tunable, unless it is already set.

  Call it first thing in a command's entry point, before anything heavy is imported: the
  process image is replaced (same pid, same arguments), so nothing done before survives.
  `argv` is the interpreter command line to run again (default `sys.orig_argv`).
  """
  if not _is_glibc_linux():
    return
  env = huge_pages_env(os.environ)
  if env is None:
    return
  argv = list(sys.orig_argv if argv is None else argv)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + argv[1:], env)


def release_free_memory() -> None:
  """Returns the allocator's free pages to the OS (glibc `malloc_trim`), e.g. after compiling.

  Compiling the base model's step leaves ~0.3 GiB of freed compiler memory resident (0.92 -> 0.63 GiB); trimming
  it before the training state is allocated lowers the process's peak by as much.
  """
  if _is_glibc_linux():
    try:
      ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # a libc without malloc_trim: nothing to release
      pass
