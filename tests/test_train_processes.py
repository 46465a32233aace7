"""Training across processes: SIGKILL recovery, and 2 processes x 4 devices == 1 x 8, the
latter in a gs:// workdir on the local Cloud Storage emulator, as on a multi-host TPU VM."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from etils import epath

from run_configs import REPO, flat_params, tiny_config_dict
from twelve_in_one.train import loop as loop_lib

CONFIG = f"{REPO}/configs/twelve_in_one.py:tiny"


def _cli(workdir, *overrides, env=None):
  return [sys.executable, "-m", "twelve_in_one.cli", "train", f"--config={CONFIG}",
          f"--workdir={workdir}", "--config.tasks=vqa,refcoco", "--config.schedule.num_epochs=6",
          "--config.checkpoint.every_iterations=2", "--config.compilation_cache_dir=",
          *overrides]


def test_sigkill_resumes_from_the_previous_checkpoint(tmp_path, tiny_straight_run):
  # `_cli` runs the same config as the straight run.
  config = tiny_config_dict(tasks="vqa,refcoco", **{"schedule.num_epochs": 6,
                                                    "checkpoint.every_iterations": 2})
  _, expected = tiny_straight_run

  workdir = tmp_path / "killed"
  process = subprocess.Popen(_cli(workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  checkpoints = workdir / "checkpoints"
  while time.time() < deadline and process.poll() is None:
    if checkpoints.is_dir() and any(p.name == "4" for p in checkpoints.iterdir()):
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)   # no handler runs: whatever was mid-write stays so
  process.wait()
  assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  resumed = loop_lib.train_and_evaluate(config, str(workdir))
  got = flat_params(resumed.state.params)
  for name, value in expected.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _losses(workdir) -> list[tuple[int, str, float]]:
  records = [json.loads(line) for line in (epath.Path(workdir) / "metrics.jsonl").read_text()
             .splitlines()]
  return sorted((r["iteration"], r["task"], r["loss"]) for r in records
                if r.get("kind") == "train")


def test_two_processes_match_one_process_with_eight_devices(gcs, tiny_straight_run):
  single, _ = tiny_straight_run   # the same config as `_cli`, one process with 8 devices
  port = _free_port()
  multi = gcs.create_bucket("two-hosts") + "/run"
  env = dict(os.environ, XLA_FLAGS=os.environ["XLA_FLAGS"].replace(
      "device_count=8", "device_count=4"))
  env.pop("JAX_COMPILATION_CACHE_DIR")   # both processes compile alike, none reads the other's
  processes = [subprocess.Popen(
      _cli(multi, f"--config.distributed.coordinator_address=127.0.0.1:{port}",
           "--config.distributed.num_processes=2", f"--config.distributed.process_id={index}"),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for index in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  assert all(p.returncode == 0 for p in processes), outputs[0][-3000:] + outputs[1][-3000:]
  one, two = _losses(single), _losses(multi)
  assert [(i, t) for i, t, _ in one] == [(i, t) for i, t, _ in two]
  np.testing.assert_allclose([l for *_, l in two], [l for *_, l in one], rtol=1e-5)
  names = gcs.object_names("two-hosts", "run/")
  # Process 0 alone wrote the logs (one event file); both wrote their shards of every save.
  assert len([n for n in names if "events.out.tfevents" in n]) == 1
  assert {"run/metrics.jsonl", "run/results.json", "run/results.md"} <= set(names)
  final = [n for n in names if n.startswith("run/checkpoints/6/state/")]
  assert any("process_0" in n for n in final) and any("process_1" in n for n in final), final
