"""The command's host-memory set-up: glibc's huge-page tunable, set once by re-executing."""

import os
import platform
import subprocess
import sys

import pytest

from twelve_in_one import hostmem


def test_tunable_is_added_once_and_an_explicit_setting_wins():
  env = hostmem.huge_pages_env({"PATH": "/bin"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and env["PATH"] == "/bin"
  kept = hostmem.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert hostmem.huge_pages_env(env) is None                      # already set: no re-exec
  assert hostmem.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # opt-out


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc tunables exist on Linux/glibc only")
def test_reexec_runs_the_same_command_once_with_the_tunable():
  code = ("import os, sys; from twelve_in_one import hostmem; print('start', flush=True); "
          "hostmem.reexec_with_huge_pages(); print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  out = subprocess.run([sys.executable, "-c", code, "an-argument"], env=env, check=True,
                       capture_output=True, text=True, timeout=60).stdout.split("\n")
  # The first image prints "start" and is replaced; the second prints it again, then the rest.
  assert out[:3] == ["start", "start", "glibc.malloc.hugetlb=1 ['an-argument']"], out
