"""Host memory behaviour of a training process on Linux/glibc: huge pages and trimming.

XLA:CPU allocates every executable's temporaries afresh on each call and frees them after.
glibc serves allocations that large with `mmap` and returns them with `munmap`, so each
training step touches its temporaries as brand-new 4 KiB pages, one page fault each (their
count and cost are in BENCHMARKS.md). Asking glibc to back its memory with transparent huge
pages (the `glibc.malloc.hugetlb=1` tunable, glibc >= 2.35, honoured where THP is `madvise`
or `always`) cuts the faults about 64-fold (BENCHMARKS.md, "Huge pages"). glibc reads its
tunables only when a process starts, so the commands that train (`train`, `pretrain`, `study`)
re-execute themselves once with the tunable set, when the run will compute on the CPU. On
TPU and GPU a step's temporaries live in device memory, so the re-exec would only cost a
start-up; the other commands (`eval`, `plot`, `prepare`, ...) never re-execute.

The backend is decided before jax is imported (`expected_backend`): `JAX_PLATFORMS`, else
`JAX_PLATFORM_NAME`, names it when set (its first entry: JAX's highest priority). Otherwise an
accelerator counts only when both halves JAX needs are present, its runtime installed and its
device nodes visible: TPU when the `libtpu` package (or `TPU_LIBRARY_PATH`) is there and
`/dev/accel*` or `/dev/vfio/<n>` exists; GPU when a JAX CUDA or ROCm plugin package
(`CUDA_PLUGINS`, `ROCM_PLUGINS`) is there and `/dev/nvidia<n>` (CUDA, unless
`CUDA_VISIBLE_DEVICES` hides every GPU) or `/dev/kfd` (ROCm) exists. Anything else is the CPU.
Packages are looked up with `importlib.util.find_spec` (found, not imported: well under a
millisecond). A wrong guess costs little either way: a needless re-exec on an accelerator, or
CPU steps without huge pages.

Opt out with `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` (any explicit hugetlb setting is kept).
Nothing here changes a computed value; it only changes how memory pages are mapped.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import platform
import sys
from typing import Callable, Mapping, Sequence

HUGETLB = "glibc.malloc.hugetlb"
# The commands whose CPU runs spend their time in training steps.
HUGE_PAGE_COMMANDS = ("train", "pretrain", "study")
# JAX platform names -> the backend families decided here.
_PLATFORMS = {"cpu": "cpu", "tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}
# JAX's GPU plugin packages (`jax[cuda12]`, `jax[cuda13]`, `jax[rocm]`), by module name.
CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")
ROCM_PLUGINS = ("jax_rocm60_plugin", "jax_rocm7_plugin")


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


def _has_module(name: str) -> bool:
  """Whether the top-level module `name` is installed (found, not imported)."""
  return importlib.util.find_spec(name) is not None


def expected_backend(environ: Mapping[str, str] | None = None, *,
                     device_paths: Callable[[str], list[str]] = glob.glob,
                     has_module: Callable[[str], bool] = _has_module) -> str:
  """"cpu", "tpu", "gpu" (or an unknown platform's name): where JAX will compute by default.

  Decided without importing jax (see the module docstring for the rules). The keyword
  arguments replace the file-system probes, for tests.
  """
  environ = os.environ if environ is None else environ
  named = environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or ""
  first = named.split(",")[0].strip().lower()
  if first:
    return _PLATFORMS.get(first, first)
  if ((has_module("libtpu") or environ.get("TPU_LIBRARY_PATH"))
      and (device_paths("/dev/accel*") or device_paths("/dev/vfio/[0-9]*"))):
    return "tpu"
  cuda_hidden = environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1")
  if (any(map(has_module, CUDA_PLUGINS)) and not cuda_hidden
      and device_paths("/dev/nvidia[0-9]*")):
    return "gpu"
  if any(map(has_module, ROCM_PLUGINS)) and device_paths("/dev/kfd"):
    return "gpu"
  return "cpu"


def wants_huge_pages(command: str, environ: Mapping[str, str] | None = None, **probes) -> bool:
  """Whether `twelve-in-one <command>` should re-execute with the huge-page tunable: a command
  that trains, on the CPU backend. `probes` go to `expected_backend`."""
  return command in HUGE_PAGE_COMMANDS and expected_backend(environ, **probes) == "cpu"


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

  Compiling a step leaves the compiler's freed memory resident; trimming it before the
  training state is allocated lowers the process's peak by as much (BENCHMARKS.md).
  """
  if _is_glibc_linux():
    try:
      ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # a libc without malloc_trim: nothing to release
      pass
