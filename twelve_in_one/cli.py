"""The `twelve-in-one` console script: `twelve-in-one <command> [--flags]`.

Each command is a module `twelve_in_one.commands.<command>` that defines its absl flags and a
`main(argv)`; the flags of one command are only defined when that command runs, so
`--help` of each command lists its own flags only.

Run from the command line, `train` and `study` on the CPU backend first re-execute themselves
once with glibc's huge-page tunable set (`hostmem.py`: faster CPU training steps, measured in
BENCHMARKS.md); set `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` to opt out. Other commands, and
runs on TPU or GPU, start as they are.

Errors a user can fix (a missing bucket or file, malformed data, a bad config value: every
`ValueError` and `OSError`) are printed as one line, `twelve-in-one <command>: error: ...`,
with exit status 1; set `TWELVE_IN_ONE_TRACEBACK=1` to see the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

from twelve_in_one import hostmem

COMMANDS = {
    "train": "multi-task training (round-robin, DSG), resuming from the workdir",
    "forward": "run every task's forward pass on random inputs (a smoke test of the model)",
    "convert": "official PyTorch / npz / safetensors checkpoint <-> our orbax checkpoint",
    "parity": "compare our forward with reference outputs from the official code",
    "generate": "write the generated mini 12-in-1 release (synthetic scenes, release formats)",
    "prepare": "official data release of one task -> prepared TFDS (array_record) datasets",
    "eval": "official metrics, predictions, VQA/GQA server files and the paper-style table",
    "predict": "one image + one text + one task -> answer / box / label, with --visualize",
    "plot": "per-task training curves from metrics.jsonl, DSG stops and restarts marked",
    "study": "the paper's comparison in miniature: multi-task vs one model per task",
}


TRACEBACK_ENV = "TWELVE_IN_ONE_TRACEBACK"


def usage() -> str:
  lines = ["usage: twelve-in-one <command> [--flag=value ...]", "", "commands:"]
  lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
  lines += ["", "`twelve-in-one <command> --help` lists the command's flags."]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv_is_the_process_command_line = argv is None
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  if command not in COMMANDS:
    print(f"twelve-in-one: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    sys.exit(2)
  if argv_is_the_process_command_line and hostmem.wants_huge_pages(command):
    # Before anything heavy is imported: glibc reads its tunables at process start only.
    hostmem.reexec_with_huge_pages()
  from absl import app  # imported late so `--help` of the dispatcher stays instant
  module = importlib.import_module(f"twelve_in_one.commands.{command}")
  try:
    app.run(module.main, argv=[f"twelve-in-one {command}"] + argv[2:])
  except (ValueError, OSError) as error:
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
      raise
    print(f"twelve-in-one {command}: error: {error}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
