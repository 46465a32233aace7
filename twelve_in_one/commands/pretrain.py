"""`twelve-in-one pretrain --config configs/pretrain.py:VARIANT --workdir DIR [--config.x=v]`.

Runs (or resumes, when DIR holds checkpoints) ViLBERT pretraining on the Conceptual Captions
corpus, as `train_concap.py` does, and writes `DIR/pretrained`, the parameters a multi-task run
starts from (`--config.init.checkpoint DIR/pretrained`). See `configs/pretrain.py` for the
variants and the commands that run them.

Exit status: 0 when the run finished; 143 (128 + SIGTERM) when it was preempted and saved its
state, so that a restart-on-failure supervisor reruns it and the rerun resumes; 1 and 2 for
errors (see `twelve_in_one/cli.py`). A second trainer on the same DIR stops at once, naming the
first one's host and pid.
"""

from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "pretraining config file[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and the export go")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  import os

  import jax
  if _CONFIG.value.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(_CONFIG.value.compilation_cache_dir))
  from twelve_in_one.pretrain.trainer import PREEMPTED_EXIT_STATUS, pretrain
  # Library INFO logs (orbax, jax) would drown the progress bar; `--verbosity=0` brings them.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  result = pretrain(_CONFIG.value, _WORKDIR.value)
  if result.preempted:
    print(f"preempted after step {result.steps}; rerun the same command to resume")
    sys.exit(PREEMPTED_EXIT_STATUS)
  for entry in result.validation[-1:]:
    print(f"validation after epoch {entry['epoch']}: loss {entry['loss']:.4f} (masked LM "
          f"{entry['masked_lm_loss']:.4f}, masked regions {entry['masked_img_loss']:.4f}, "
          f"alignment {entry['next_sentence_loss']:.4f}; {entry['examples']} examples)")
  if result.pretrained:
    print(f"pretrained parameters: {result.pretrained}")
