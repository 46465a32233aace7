"""The fault matrix: what a user sees for each way a command can be misused or fail.

Every case runs the real console entry point in a fresh process and checks the outcome a
restart-on-failure supervisor and a person both rely on: the exit status (2 usage or config,
1 data or I/O, 0 only on success, 143 preempted), one `twelve-in-one <command>: error: ...`
line naming what went wrong and where (no traceback), and that nothing the run had already
written was changed. `--help` of every command lists that command's own flags.

Cases that need a training run to set up (a changed parameter shape, a damaged checkpoint,
divergence, preemption, a second trainer) live in tests/test_faults_train.py, data faults
(damaged prepared data, bad values in release files, truncated feature LMDBs) in
tests/data/test_faults_data.py, and gs:// faults in tests/test_cloud*.py.
"""

import hashlib
import os
import re
import subprocess
import sys

import pytest

from twelve_in_one import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = f"{REPO}/configs/twelve_in_one.py"


def _run(*args, cwd=REPO, timeout=180):
  return subprocess.run([sys.executable, "-m", "twelve_in_one.cli", *args], capture_output=True,
                        text=True, cwd=cwd, timeout=timeout)


def _tree_digest(root) -> dict[str, str]:
  """Every file below `root` with the SHA-256 of its bytes (what "touch nothing" compares)."""
  digest = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as handle:
        digest[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
  return digest


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir with a metrics log and a results table, which no failing command may touch."""
  root = tmp_path_factory.mktemp("existing_run")
  (root / "metrics.jsonl").write_text('{"iteration": 1, "task": "vqa", "kind": "train", '
                                      '"loss": 1.0}\n')
  (root / "results.md").write_text("| task | score |\n")
  return root


# (case, arguments with {workdir} and {tmp} filled in, exit status, fragment of the error line)
CASES = [
    ("unknown flag", ["plot", "--wrkdir={workdir}"], 2,
     "Unknown command line flag 'wrkdir'. Did you mean: workdir ?"),
    ("required flag missing", ["plot"], 2, "--workdir"),
    ("unknown config field", ["train", f"--config={CONFIG}:tiny", "--workdir={workdir}",
                              "--config.schedule.nope=1"], 2,
     "--config.schedule.nope: the config has no field 'nope'"),
    ("config value of the wrong type", ["train", f"--config={CONFIG}:tiny",
                                        "--workdir={workdir}",
                                        "--config.schedule.num_epochs=abc"], 2,
     "--config.schedule.num_epochs=abc: invalid literal for int()"),
    ("config file missing", ["train", f"--config={REPO}/configs/no_such.py",
                             "--workdir={workdir}"], 2,
     f"--config={REPO}/configs/no_such.py: cannot load the config file (no such file)"),
    ("config file does not parse", ["train", "--config={tmp}/broken.py",
                                    "--workdir={workdir}"], 2,
     "broken.py:1: the config file does not parse (invalid syntax)"),
    ("unknown config variant", ["train", f"--config={CONFIG}:nosuch", "--workdir={workdir}"],
     2, "unknown config variant 'nosuch'"),
    ("config value out of range", ["train", f"--config={CONFIG}:tiny", "--workdir={workdir}",
                                   "--config.schedule.num_epochs=0"], 2,
     "config.schedule.num_epochs=0; expected >= 1"),
    ("no metrics to plot", ["plot", "--workdir={tmp}/empty_run"], 1, "metrics.jsonl"),
    ("release folder missing", ["prepare", "--task=vqa", "--release_dir={tmp}/no_release",
                                "--data_dir={tmp}/prepared"], 1, "no_release"),
    ("prepared data missing", ["eval", f"--config={CONFIG}:smoke", "--workdir={workdir}",
                               "--config.data.data_dir={tmp}/not_prepared",
                               "--config.tasks=vqa"], 1, None),
    ("init checkpoint missing", ["convert", "--input={tmp}/no_such.bin",
                                 f"--config={REPO}/configs/no_such.json",
                                 "--output={tmp}/converted"], 1, "no_such"),
]


@pytest.mark.parametrize("case,args,status,fragment", CASES, ids=[c[0] for c in CASES])
def test_fault_case(case, args, status, fragment, workdir, tmp_path):
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  (tmp_path / "empty_run").mkdir()
  before = _tree_digest(workdir)
  command = args[0]
  run = _run(*[a.format(workdir=workdir, tmp=tmp_path) for a in args])
  assert run.returncode == status, (case, run.returncode, run.stderr[-3000:])
  assert "Traceback" not in run.stderr, run.stderr[-3000:]
  errors = [line for line in run.stderr.splitlines()
            if line.startswith(f"twelve-in-one {command}: error: ")]
  assert len(errors) == 1, run.stderr[-3000:]
  assert run.stderr.rstrip().splitlines()[-1] == errors[0]     # the last thing a user sees
  if fragment:
    assert fragment in errors[0], errors[0]
  assert _tree_digest(workdir) == before                        # nothing already there changed


def test_traceback_on_request(tmp_path):
  run = _run("plot", f"--workdir={tmp_path}", "--traceback")
  assert run.returncode == 1 and "Traceback (most recent call last)" in run.stderr


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_help_lists_its_own_flags(command):
  run = _run(command, "--help")
  assert run.returncode == 0, run.stderr[-2000:]
  # The command's own flags, as its module defines them (read from the source, since two
  # commands' modules cannot be imported into one absl flag registry).
  source = open(os.path.join(REPO, "twelve_in_one", "commands", f"{command}.py")).read()
  own = re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source)
  assert own, f"{command} defines no flags"
  for name in own:
    assert re.search(rf"--(\[no\])?{name}:", run.stdout), (command, name, run.stdout)


def test_exit_status_by_kind_of_error():
  from twelve_in_one.data.errors import DataError
  assert cli.exit_status(DataError("f.json: row 3: bad")) == 1
  assert cli.exit_status(OSError(28, "No space left on device")) == 1
  assert cli.exit_status(FileNotFoundError("x")) == 1
  assert cli.exit_status(FloatingPointError("task vqa: loss is nan at iteration 9")) == 1
  assert cli.exit_status(ValueError("config.optimizer.base_lr=-1; expected > 0")) == 2
