"""Training faults that must neither lose work nor pass silently.

A resume with another model's shapes is refused and changes nothing; a damaged newest
checkpoint is set aside (renamed, never deleted) and the run finishes, rerun after rerun;
`checkpoint.keep` < 1 and other bad values are config errors naming the key; divergence never
writes a non-finite checkpoint; a preempted `train` exits 143; a second trainer on a workdir
refuses at once, naming the first one's host and pid (a flock locally, a lease object on
gs://). The command line's own faults are in tests/test_fault_matrix.py.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from run_configs import REPO, tiny_config_dict
from twelve_in_one.train import loop as loop_lib
from twelve_in_one.train import workdir_lock
from twelve_in_one.train.checkpoint import DAMAGED_DIR, CheckpointMismatchError

# vqa + refcoco, one iteration per epoch, a save every 2: the programs of test_train.py's
# straight run, so the session's compilation cache already holds them.
RUN = {"schedule.num_epochs": 4, "checkpoint.every_iterations": 2}


def _digest(root) -> dict[str, str]:
  """Every file below `root` with the SHA-256 of its bytes."""
  found = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as handle:
        found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
  return found


def _steps(workdir) -> list[int]:
  return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 4-iteration run (checkpoints 2 and 4); tests work on copies of it."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  result = loop_lib.train_and_evaluate(tiny_config_dict(tasks="vqa,refcoco", **RUN),
                                       str(workdir))
  assert result.iterations == 4 and _steps(workdir) == [2, 4]
  return workdir


def _copy(finished_run, tmp_path):
  target = tmp_path / "run"
  shutil.copytree(finished_run, target)
  return target


# ------------------------------------------------------------------ 1. another model's shapes


def test_a_changed_parameter_shape_is_refused_and_nothing_is_touched(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  before = _digest(workdir)
  config = tiny_config_dict(tasks="vqa,refcoco", **RUN, **{"model.vocab_size": 2000})
  with pytest.raises(CheckpointMismatchError) as refused:
    loop_lib.train_and_evaluate(config, str(workdir))
  message = str(refused.value)
  assert isinstance(refused.value, ValueError) and "\n" not in message   # a config error
  assert (f"{workdir}/checkpoints/4 holds another model's state: "
          "params/bert/embeddings/word_embeddings/embedding: (1000, 48) float32 in the "
          "checkpoint, (2000, 48) float32 in this config") in message
  assert _digest(workdir) == before   # no metrics line, no result, no checkpoint changed


# ------------------------------------------------------------------ 2. a damaged newest step


def test_a_truncated_newest_checkpoint_is_set_aside_and_the_run_finishes(finished_run,
                                                                        tmp_path):
  workdir = _copy(finished_run, tmp_path)
  data = workdir / "checkpoints" / "4" / "state"
  for path in [p for p in data.rglob("*") if p.is_file() and p.parent.name == "d"]:
    os.truncate(path, path.stat().st_size // 2)
  damaged = _digest(workdir / "checkpoints" / "4")
  config = tiny_config_dict(tasks="vqa,refcoco", **RUN)

  resumed = loop_lib.train_and_evaluate(config, str(workdir))
  assert resumed.iterations == 4 and _steps(workdir) == [2, 4]
  (aside,) = (workdir / DAMAGED_DIR).iterdir()
  assert aside.name.startswith("4-") and _digest(aside) == damaged   # moved whole, not deleted
  notes = [json.loads(line)["note"] for line in (workdir / "metrics.jsonl").read_text()
           .splitlines() if "note" in line]
  reports = [note for note in notes if "is unreadable" in note]
  assert len(reports) == 1 and f"moved it to {aside}" in reports[0], reports
  assert f"resumed from {workdir}/checkpoints/2" in notes

  again = loop_lib.train_and_evaluate(config, str(workdir))   # a rerun: no step collision
  assert again.iterations == 4 and _steps(workdir) == [2, 4]
  assert len(list((workdir / DAMAGED_DIR).iterdir())) == 1


# ------------------------------------------------------------------ 3 and 8. bad config values


@pytest.mark.parametrize("key, value", [
    ("checkpoint.keep", 0), ("checkpoint.keep", -1), ("optimizer.base_lr", -2e-5),
    ("optimizer.base_lr", 0.0), ("optimizer.head_lr", -1e-4), ("task_settings.vqa.lr", -4e-5),
    ("task_settings.vqa.batch_size", 0), ("task_settings.vqa.batch_size", -8),
    ("log_every", 0)])
def test_bad_values_are_config_errors_naming_the_key(tmp_path, key, value):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=f"^config.{key}={value}; expected"):
    loop_lib.train_and_evaluate(tiny_config_dict(tasks="vqa", **{key: value}), str(workdir))
  assert not workdir.exists()   # refused before the workdir was made


# ------------------------------------------------------------------ 4. divergence


def test_divergence_never_writes_a_non_finite_checkpoint(tmp_path):
  # lr 1e30: iteration 0 runs at warm-up multiplier 0, iteration 1's update overflows.
  config = tiny_config_dict(tasks="vqa", **{"schedule.num_epochs": 4,
                                            "checkpoint.every_iterations": 1,
                                            "optimizer.base_lr": 1e30})
  with pytest.raises(FloatingPointError, match=r"^task vqa: non-finite parameters or Adam "
                                                 r"moments after the update at iteration 1 "):
    loop_lib.train_and_evaluate(config, str(tmp_path))
  steps = _steps(tmp_path)
  assert steps == [1]
  for step in steps:
    restored = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(step) / "state")
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(restored)]
    assert all(np.isfinite(leaf).all() for leaf in leaves if leaf.dtype.kind == "f"), step


# ------------------------------------------------------------------ 5 and 6. two processes


def _train_cli(workdir, *overrides):
  return [sys.executable, "-m", "twelve_in_one.cli", "train",
          f"--config={REPO}/configs/twelve_in_one.py:tiny", f"--workdir={workdir}",
          "--config.tasks=vqa,refcoco", "--config.checkpoint.every_iterations=2",
          "--config.compilation_cache_dir=", "--config.eval_during_training=false", *overrides]


@pytest.fixture(scope="module")
def two_trainers(tmp_path_factory):
  """A trainer (1000 iterations) on a workdir; once it has saved, a second one on the same
  workdir; then SIGTERM to the first. Returns both outcomes."""
  root = tmp_path_factory.mktemp("shared")
  workdir = root / "run"
  # Files, not pipes: a full pipe would stall the trainer while the second one runs.
  out_file, err_file = open(root / "first.out", "w+"), open(root / "first.err", "w+")
  first = subprocess.Popen(_train_cli(workdir, "--config.schedule.num_epochs=1000"), cwd=REPO,
                           stdout=out_file, stderr=err_file, text=True)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
      if (workdir / "checkpoints" / "2").is_dir():
        break
      time.sleep(0.05)
    assert first.poll() is None, (root / "first.err").read_text()[-3000:]
    started = time.monotonic()
    second = subprocess.run(_train_cli(workdir, "--config.schedule.num_epochs=1000"), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    second_seconds = time.monotonic() - started
    assert first.poll() is None, "the first trainer finished before the second started"
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
  finally:
    if first.poll() is None:
      first.kill()
    out_file.close()
    err_file.close()
  out, err = (root / "first.out").read_text(), (root / "first.err").read_text()
  return dict(first=first, first_out=out, first_err=err, second=second,
              second_seconds=second_seconds, workdir=workdir)


def test_a_preempted_train_saves_and_exits_143(two_trainers):
  first = two_trainers["first"]
  assert first.returncode == 143, two_trainers["first_err"][-3000:]
  last = two_trainers["first_out"].strip().splitlines()[-1]
  assert last.startswith("preempted after iteration ") and last.endswith(
      "; rerun the same command to resume"), last
  iteration = int(last.split()[3].rstrip(";"))
  assert iteration in _steps(two_trainers["workdir"])   # saved on the way out


def test_a_second_trainer_refuses_at_once_naming_the_first(two_trainers):
  second, first = two_trainers["second"], two_trainers["first"]
  assert second.returncode == 1, second.stderr[-3000:]
  lines = second.stderr.strip().splitlines()
  assert len(lines) == 1, second.stderr[-3000:]
  assert lines[0].startswith("twelve-in-one train: error: --workdir ")
  assert f"in use by another trainer: host {socket.gethostname()}, pid {first.pid} " in lines[0]
  assert two_trainers["second_seconds"] < 60   # before data, compilation or training
  # It wrote nothing: one run's start in the log (a trainer's first line names its tasks).
  notes = [json.loads(line).get("note", "") for line in
           (two_trainers["workdir"] / "metrics.jsonl").read_text().splitlines()]
  assert len([note for note in notes if note.startswith("tasks: ")]) == 1


def test_a_dead_trainers_lock_file_does_not_block(tmp_path):
  (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 999999}))
  with workdir_lock.WorkdirLock(str(tmp_path)).acquire():   # flock died with that process
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {os.getpid()}"):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  with workdir_lock.WorkdirLock(str(tmp_path)).acquire():   # given back: free again
    pass


def test_a_gs_workdir_has_a_lease_refused_renewed_and_taken_over_when_stale(gcs, caplog,
                                                                          monkeypatch):
  from google.cloud import storage
  workdir = gcs.create_bucket("leases") + "/run"
  lease = storage.Client().bucket("leases").blob("run/lock.json")
  with workdir_lock.WorkdirLock(workdir).acquire() as held:
    holder = json.loads(lease.download_as_text())
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    with pytest.raises(workdir_lock.WorkdirBusyError,
                       match=f"host {socket.gethostname()}, pid {os.getpid()}"):
      workdir_lock.WorkdirLock(workdir).acquire()
    held.check()
  assert not lease.exists()   # given back

  for stale in ({"host": "other-host", "pid": 7, "expires": time.time() - 1},   # expired
                {"host": socket.gethostname(), "pid": 999999,                    # pid gone
                 "expires": time.time() + 600}):
    lease.upload_from_string(json.dumps(stale))
    caplog.clear()
    with workdir_lock.WorkdirLock(workdir).acquire():
      assert json.loads(lease.download_as_text())["pid"] == os.getpid()
    warnings = [r.getMessage() for r in caplog.records if "stale lease" in r.getMessage()]
    assert len(warnings) == 1 and f"pid {stale['pid']}" in warnings[0], warnings
  lease.upload_from_string(json.dumps({"host": "other-host", "pid": 7,
                                       "expires": time.time() + 600}))
  with pytest.raises(workdir_lock.WorkdirBusyError, match="host other-host, pid 7"):
    workdir_lock.WorkdirLock(workdir).acquire()

  # Renewed while held; a holder whose lease another took over stops before its next save,
  # and leaves the new holder's lease alone.
  lease.delete()
  monkeypatch.setattr(workdir_lock, "RENEW_S", 0.1)
  held = workdir_lock.WorkdirLock(workdir).acquire()
  first = json.loads(lease.download_as_text())["expires"]
  deadline = time.time() + 10
  while json.loads(lease.download_as_text())["expires"] == first and time.time() < deadline:
    time.sleep(0.05)
  assert json.loads(lease.download_as_text())["expires"] > first
  lease.upload_from_string(json.dumps({"host": "other-host", "pid": 8,
                                       "expires": time.time() + 600}))
  while time.time() < deadline:
    try:
      held.check()
    except workdir_lock.WorkdirBusyError as lost:
      assert "another trainer took over its lease" in str(lost)
      break
    time.sleep(0.05)
  else:
    pytest.fail("the holder did not notice that its lease was taken over")
  held.release()
  assert json.loads(lease.download_as_text())["pid"] == 8


def test_a_damaged_step_in_a_bucket_is_moved_aside_and_its_number_saved_again(gcs):
  from etils import epath

  from twelve_in_one.train.checkpoint import Checkpointer
  from twelve_in_one.train.steps import TrainState
  workdir = gcs.create_bucket("damaged") + "/run"
  state = lambda value: TrainState(step=jax.numpy.array(value, jax.numpy.int32),
                                   params={"w": jax.numpy.full((4,), float(value))},
                                   opt_state={"mu": {"w": jax.numpy.zeros(4)},
                                              "nu": {"w": jax.numpy.zeros(4)}})
  checkpointer = Checkpointer(workdir, asynchronous=False)
  for step in (1, 2):
    checkpointer.save(step, state(step), {"iteration": step})
  checkpointer.close()
  damaged = sorted(n for n in gcs.object_names("damaged", "run/checkpoints/2/")
                   if "/d/" in n)   # the array data
  for name in damaged:
    (epath.Path("gs://damaged") / name).write_bytes(b"")
  kept = {n.split("run/checkpoints/2/")[1] for n in gcs.object_names("damaged", "run/checkpoints/2/")}

  reports = []
  checkpointer = Checkpointer(workdir, asynchronous=False)
  iteration, restored, host = checkpointer.restore_latest(
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state(0)),
      report=reports.append)
  assert (iteration, host, float(restored["params"]["w"][0])) == (1, {"iteration": 1}, 1.0)
  assert len(reports) == 1 and "checkpoints/2 is unreadable" in reports[0], reports
  moved = gcs.object_names("damaged", "run/checkpoints-damaged/")
  assert {n.split("/", 3)[3] for n in moved} == kept   # every object, under 2-<time>/
  assert not gcs.object_names("damaged", "run/checkpoints/2/")
  checkpointer.save(2, state(2), {"iteration": 2})   # the number is free again
  assert checkpointer.all_steps() == [1, 2]
  checkpointer.close()
