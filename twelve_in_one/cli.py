"""The `twelve-in-one` console script: `twelve-in-one <command> [--flags]`.

Each command is a module `twelve_in_one.commands.<command>` that defines its absl flags and a
`main(argv)`; the flags of one command are only defined when that command runs, so
`--help` of each command lists its own flags only.

Run from the command line, `train`, `pretrain` and `study` on the CPU backend first
re-execute themselves once with glibc's huge-page tunable set (`hostmem.py`: faster CPU
training steps, measured in BENCHMARKS.md); set `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` to
opt out. Other commands, and runs on TPU or GPU, start as they are.

Errors a user can fix are printed as one line on stderr, `twelve-in-one <command>: error: ...`,
with the exit status saying whose move it is:

    2    usage and config: an unknown flag or config key, a bad config value (ValueError)
    1    data and I/O: a malformed file (DataError), a missing file or bucket, a full disk
         (OSError), a training run that diverged (FloatingPointError)
    143  `train` or `pretrain` was preempted (SIGTERM) after saving; rerun the same command
         to resume

`--traceback` (or `TWELVE_IN_ONE_TRACEBACK=1`) shows the full traceback instead.
`twelve-in-one <command> --help` lists that command's own flags and exits 0.
"""

from __future__ import annotations

import importlib
import os
import sys

from twelve_in_one import hostmem

COMMANDS = {
    "train": "multi-task training (round-robin, DSG), resuming from the workdir",
    "pretrain": "pretraining on Conceptual Captions (train_concap.py), resuming from the workdir",
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


def command_help(command: str, module) -> str:
  """The command's docstring summary and its own flags (absl's `--help` lists only those of
  the `__main__` module, which for the console script is this dispatcher)."""
  from absl import flags  # noqa: PLC0415 - only when help is asked for
  summary = (module.__doc__ or COMMANDS[command]).strip()
  own = flags.FLAGS.module_help(module).strip()
  return f"{summary}\n\nflags:\n{own.partition(chr(10))[2] if own else '  (none)'}"


def exit_status(error: BaseException) -> int:
  """2 for usage and config errors, 1 for data, I/O and divergence (see the module docs)."""
  from twelve_in_one.data.errors import DataError  # noqa: PLC0415 - light, no jax
  if isinstance(error, (DataError, OSError, ArithmeticError)):
    return 1
  return 2


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with usage errors as one line and exit status 2."""
  from absl import flags  # noqa: PLC0415
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    message = str(error)
    if "Traceback (most recent call last)" in message:   # config_flags embeds one; keep its end
      lines = [line for line in message.splitlines() if line.strip()]
      message = f"{lines[0].rstrip(':')}: {lines[-1].strip()}"
  except (AttributeError, KeyError) as error:
    # ml_collections reports an unknown override key as a bare "'key'"; name the argument.
    key = str(error).strip("\"'")
    named = [arg.split("=", 1)[0] for arg in argv[1:]
             if arg.startswith("--config.") and key in arg.split("=", 1)[0].split(".")]
    message = (f"{named[0] if named else '--config'}: the config has no field {key!r} "
               "(`--help` lists the flags; the config file lists its fields)")
  except SyntaxError as error:   # the config file itself does not parse
    message = f"{error.filename}:{error.lineno}: the config file does not parse ({error.msg})"
  except Exception as error:  # noqa: BLE001 - a config file that fails to load, a bad value
    message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
  print(f"{argv[0]}: error: {message}", file=sys.stderr)
  sys.exit(2)


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
  if "--traceback" in argv:
    argv = [arg for arg in argv if arg != "--traceback"]
    os.environ[TRACEBACK_ENV] = "1"
  if argv_is_the_process_command_line and hostmem.wants_huge_pages(command):
    # Before anything heavy is imported: glibc reads its tunables at process start only.
    hostmem.reexec_with_huge_pages()
  from absl import app  # imported late so `--help` of the dispatcher stays instant
  module = importlib.import_module(f"twelve_in_one.commands.{command}")
  if any(arg in ("-h", "--help", "--helpshort", "-?") for arg in argv[2:]):
    print(command_help(command, module))
    sys.exit(0)
  name = f"twelve-in-one {command}"
  try:
    app.run(module.main, argv=[name] + argv[2:], flags_parser=_parse_flags)
  except (ValueError, OSError, ArithmeticError) as error:
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
      raise
    message = " ".join(str(error).split("\n")[0:1]) or type(error).__name__
    status = exit_status(error)
    if "Configuration is not available" in message:   # config_flags hides why the file failed
      root = error
      while root.__cause__ or root.__context__:
        root = root.__cause__ or root.__context__
      given = next((arg for arg in argv if arg.startswith("--config=")), "--config")
      file = given.partition("=")[2].partition(":")[0]
      why = ("no such file" if file and not os.path.exists(file) else
             f"{type(root).__name__}: {str(root).splitlines()[0] if str(root) else 'no message'}")
      message = f"{given}: cannot load the config file ({why})"
      status = 2
    print(f"{name}: error: {message}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
  main()
