"""Test set-up: 8 fake CPU devices (a mesh stand-in) and the ground-truth fixtures.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives here.
"""

import os
import pathlib
import tempfile

# 8 fake CPU devices stand in for a mesh. LLVM at -O0 halves XLA's compile time, which
# dominates the suite (tiny shapes run in milliseconds either way); subprocesses inherit both.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# gcsfs probes each bucket's storage layout over gRPC, which the local Cloud Storage emulator
# (tests/gcs_emulator.py) cannot answer; it reads this setting once, at import.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# One persistent compilation cache for the whole test run (and its subprocesses): the same
# tiny-model programs are compiled by many tests and by each resumed training run.
_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                               os.path.join(tempfile.gettempdir(), "twelve_in_one_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fixture_dir() -> pathlib.Path:
  """The official tiny fixture (tests/fixtures/vilbert_tiny)."""
  import ground_truth
  return ground_truth.path("vilbert_tiny")


@pytest.fixture(scope="session")
def pretrain_fixture_dir() -> pathlib.Path:
  """The official pretraining fixture (tests/fixtures/vilbert_pretrain_tiny)."""
  import ground_truth
  return ground_truth.path("vilbert_pretrain_tiny")


@pytest.fixture(scope="session")
def tiny_straight_run(tmp_path_factory):
  """One uninterrupted tiny training run (vqa + refcoco, 6 iterations, a save every 2):
  (its workdir, its final parameters by path). The preemption, SIGKILL and multi-process tests
  all compare against this same run, so it is trained once per test run."""
  from run_configs import flat_params, tiny_config_dict
  from twelve_in_one.train import loop as loop_lib
  config = tiny_config_dict(tasks="vqa,refcoco", **{"schedule.num_epochs": 6,
                                                    "checkpoint.every_iterations": 2})
  workdir = tmp_path_factory.mktemp("straight")
  result = loop_lib.train_and_evaluate(config, str(workdir))
  assert not result.preempted and result.iterations == 6
  return workdir, flat_params(result.state.params)


# The README runs the suite on two pytest-xdist workers, one test file at a time each
# (`-n 2 --dist loadfile`). Files are handed out in collection order, so the longest ones
# (whole training runs: minutes of XLA compilation each) go first; otherwise the largest,
# test_train.py, would start last and finish alone. Without xdist the order is harmless.
_LONGEST_FIRST = ("test_loop_fixture.py", "test_train.py", "test_train_processes.py",
                  "test_pretrain_train.py", "test_scan.py", "test_main_job.py", "test_model.py",
                  "test_faults_train.py", "test_cloud.py", "test_train_options.py",
                  "test_train_fixture.py", "test_pretrain_fixture.py", "test_thirteenth_task.py")


def pytest_configure(config):
  # xdist reorders files by their number of tests unless told not to; keep the order above.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)
  items.sort(key=rank)   # stable: the order within a file, and among the rest, is kept


@pytest.fixture(scope="session")
def gcs():
  """A Cloud Storage emulator on localhost for the whole session (tests/gcs_emulator.py).

  Sets STORAGE_EMULATOR_HOST and TENSORSTORE_GCS_HTTP_URL in this process, so the code under
  test and every subprocess it starts reach the emulator; they are restored afterwards.
  """
  from gcs_emulator import running_emulator
  with running_emulator() as emulator:
    saved = {key: os.environ.get(key) for key in emulator.env}
    os.environ.update(emulator.env)
    try:
      yield emulator
    finally:
      for key, value in saved.items():
        if value is None:
          os.environ.pop(key, None)
        else:
          os.environ[key] = value
