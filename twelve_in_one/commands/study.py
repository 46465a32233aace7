"""`twelve-in-one study --config CONFIG --workdir DIR`: multi-task vs single-task, side by side.

    twelve-in-one study --config configs/twelve_in_one.py:smoke --workdir workdir/study
    twelve-in-one study --config configs/twelve_in_one.py:smoke --workdir DIR \\
        --config.tasks=vqa,refcoco,nlvr2          # a subset of the tasks

Trains the multi-task model (DIR/multi_task) and one single-task model per task
(DIR/single/<task>) with the same config and the same number of updates per task, both from
scratch; a config with `pretraining.enabled` (smoke) also pretrains (DIR/pretrain) and repeats
the multi-task run from the pretrained model (DIR/multi_task_pretrained). Then it prints the
table and writes DIR/study.json and DIR/study.md. Rerunning resumes an interrupted study.
See `twelve_in_one/train/study.py`. A preempted study (SIGTERM) saves the run in progress and
exits with status 143, as `train` does; rerun the same command to resume.
"""

from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the study's folder (one workdir per run)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  import os

  import jax
  if _CONFIG.value.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(_CONFIG.value.compilation_cache_dir))
  from twelve_in_one.train.study import run_study
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from twelve_in_one.train.loop import PREEMPTED_EXIT_STATUS
  try:
    outcome = run_study(_CONFIG.value, _WORKDIR.value, say=print)
  except InterruptedError as preempted:   # run_study's word for a preempted run
    print(preempted)
    sys.exit(PREEMPTED_EXIT_STATUS)
  print(f"\nmulti-task vs single-task, {outcome['iterations']} iterations each "
        f"(model {outcome['model']}, seed {outcome['seed']}):\n")
  print(outcome["table"])
  print(f"wrote {os.path.join(_WORKDIR.value, 'study.md')} and study.json")
