"""The command's host-memory set-up: glibc's huge-page tunable, set once by re-executing."""

import fnmatch
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


def _no_devices(pattern):
  return []


def _no_modules(name):
  return False


@pytest.mark.parametrize("command", ["eval", "plot", "prepare", "convert", "generate",
                                     "forward", "parity", "predict"])
def test_commands_that_do_not_train_never_reexec(command):
  assert not hostmem.wants_huge_pages(command, {"JAX_PLATFORMS": "cpu"})
  assert not hostmem.wants_huge_pages(command, {}, device_paths=_no_devices,
                                      has_module=_no_modules)


@pytest.mark.parametrize("command", ["train", "pretrain", "study"])
def test_training_reexecs_on_cpu_only(command):
  assert hostmem.wants_huge_pages(command, {"JAX_PLATFORMS": "cpu"})
  assert hostmem.wants_huge_pages(command, {"JAX_PLATFORM_NAME": "cpu"})
  assert hostmem.wants_huge_pages(command, {}, device_paths=_no_devices,
                                  has_module=_no_modules)
  for platforms in ("tpu", "cuda", "gpu", "rocm", "cuda,cpu", "TPU"):
    assert not hostmem.wants_huge_pages(command, {"JAX_PLATFORMS": platforms}), platforms
  # JAX_PLATFORMS wins over the older JAX_PLATFORM_NAME.
  assert not hostmem.wants_huge_pages(command, {"JAX_PLATFORMS": "tpu",
                                                "JAX_PLATFORM_NAME": "cpu"})


def test_backend_guess_needs_both_the_runtime_and_a_device():
  def probes(devices=(), modules=()):
    return dict(device_paths=lambda pattern: fnmatch.filter(devices, pattern),
                has_module=lambda name: name in modules)
  guess = hostmem.expected_backend
  assert guess({}, **probes(["/dev/accel0"], ["libtpu"])) == "tpu"
  assert guess({}, **probes(["/dev/vfio/0"], ["libtpu"])) == "tpu"
  assert guess({"TPU_LIBRARY_PATH": "/lib/libtpu.so"}, **probes(["/dev/accel0"])) == "tpu"
  assert guess({}, **probes(["/dev/accel0"])) == "cpu"            # no runtime
  assert guess({}, **probes([], ["libtpu"])) == "cpu"             # no chip
  assert guess({}, **probes(["/dev/nvidia0"], ["jax_cuda12_plugin"])) == "gpu"
  assert guess({}, **probes(["/dev/nvidia0"], ["jax_cuda13_plugin"])) == "gpu"
  assert guess({}, **probes([], ["jax_cuda12_plugin"])) == "cpu"
  assert guess({"CUDA_VISIBLE_DEVICES": ""},
               **probes(["/dev/nvidia0"], ["jax_cuda12_plugin"])) == "cpu"
  assert guess({}, **probes(["/dev/kfd"], ["jax_rocm7_plugin"])) == "gpu"
  # An explicit platform is taken as it is, whatever is installed.
  assert guess({"JAX_PLATFORMS": "cpu"}, **probes(["/dev/accel0"], ["libtpu"])) == "cpu"


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc tunables exist on Linux/glibc only")
@pytest.mark.parametrize("command, platforms, reexecs", [
    ("train", "cpu", True), ("study", "cpu", True), ("eval", "cpu", False),
    ("plot", "cpu", False), ("train", "tpu", False), ("train", "cuda", False)])
def test_the_console_script_reexecs_only_cpu_training(command, platforms, reexecs):
  # The real dispatcher from a process command line, with the command itself replaced by a
  # print of the tunables it would run under.
  code = ("import os, sys; print('start', flush=True); from absl import app; "
          "app.run = lambda main, argv, **options: print(os.environ.get('GLIBC_TUNABLES')); "
          "from twelve_in_one import cli; sys.argv = ['twelve-in-one', sys.argv[1]]; cli.main()")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAX_PLATFORM_NAME")}
  env["JAX_PLATFORMS"] = platforms
  out = subprocess.run([sys.executable, "-c", code, command], env=env, check=True,
                       capture_output=True, text=True, timeout=60).stdout.split("\n")
  expected = (["start", "start", "glibc.malloc.hugetlb=1"] if reexecs else ["start", "None"])
  assert out[:len(expected)] == expected, out
