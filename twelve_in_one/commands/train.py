"""`twelve-in-one train --config configs/twelve_in_one.py:VARIANT --workdir DIR [--config.x=v]`.

Runs (or resumes, when DIR holds checkpoints) multi-task training and prints the final table.
See `configs/twelve_in_one.py` for the variants and the commands that run them.

Exit status: 0 when the run finished; 143 (128 + SIGTERM, what a supervisor sees of a process
SIGTERM killed) when it was preempted and saved its state, so that a restart-on-failure
supervisor reruns it and the rerun resumes; 1 and 2 for errors (see `twelve_in_one/cli.py`).
A second trainer on the same DIR stops at once, naming the first one's host and pid.
"""

from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and results go")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  import os

  import jax
  if _CONFIG.value.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(_CONFIG.value.compilation_cache_dir))
  from twelve_in_one.train.entry import run_training   # heavy imports after flag parsing
  from twelve_in_one.train.loop import PREEMPTED_EXIT_STATUS
  # Library INFO logs (orbax, jax) would drown the progress bar; `--verbosity=0` brings them.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  result = run_training(_CONFIG.value, _WORKDIR.value)
  if result.preempted:
    print(f"preempted after iteration {result.iterations}; rerun the same command to resume")
    sys.exit(PREEMPTED_EXIT_STATUS)
