"""Process figures shared by the benchmark scripts: peak RSS, a child's environment, tables.

Free of JAX and torch, so a measured child process imports nothing extra through it.
"""

from __future__ import annotations

import os
import resource


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


def reset_peak_rss() -> bool:
  """Restarts the kernel's peak-RSS count (Linux `clear_refs` 5), so the peak of what follows
  can be read on its own; False where that is not possible."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _status_gib(field: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 2**20   # kB
  return float("nan")


def peak_rss_since_reset_gib() -> float:
  """The peak resident memory since `reset_peak_rss` (or the process's start)."""
  return _status_gib("VmHWM")


def rss_gib() -> float:
  """This process's resident memory now."""
  return _status_gib("VmRSS")


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def child_env(huge_pages: bool) -> dict[str, str]:
  """This environment, with glibc's malloc asked for transparent huge pages (or not).

  XLA:CPU allocates its temporaries afresh every step, each one a page fault per 4 KiB page
  without the tunable (BENCHMARKS.md, "Huge pages"). glibc reads its tunables at process
  start only.
  """
  env = dict(os.environ)
  tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":")
              if t and not t.startswith("glibc.malloc.hugetlb")]
  if huge_pages:
    tunables.append(HUGE_PAGES_TUNABLE)
  env["GLIBC_TUNABLES"] = ":".join(tunables)
  return env


def fmt_table(header: list[str], rows: list[list[str]]) -> str:
  widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
  line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"
  sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(header), sep] + [line(r) for r in rows])


def usage_snapshot() -> tuple[int, float]:
  """(minor page faults, kernel CPU seconds) of this process so far."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_minflt, usage.ru_stime


def usage_since(snapshot: tuple[int, float]) -> tuple[int, float]:
  """Minor page faults and kernel CPU seconds since `snapshot`."""
  faults, kernel_s = usage_snapshot()
  return faults - snapshot[0], kernel_s - snapshot[1]
