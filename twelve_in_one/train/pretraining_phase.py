"""A training run's pretraining phase: pretrain, then train the tasks from the result.

The paper's multi-task model starts from a ViLBERT pretrained on Conceptual Captions. A user
with the released `pretrained_model.bin` passes it as `config.init.checkpoint`; a run whose
`config.pretraining.enabled` is set (the `smoke` main job) pretrains first instead:

* the pretraining job (`twelve_in_one/pretrain/trainer.py`) runs with `config.pretraining`, a
  whole `configs/pretrain.py` config, in `<workdir>/pretrain`, on the same generated release
  as the tasks (its caption corpus written beside them);
* its export, `<workdir>/pretrain/pretrained`, becomes the run's `config.init.checkpoint`.

Both phases resume: rerunning the command after a preemption finishes the pretraining where it
stopped, or finds it finished (its export written) and goes on with the tasks. The pretraining
phase takes the run's `config.seed`.
"""

from __future__ import annotations

import os

from twelve_in_one import paths

PRETRAIN_DIR = "pretrain"


def enabled(config) -> bool:
  """Whether the run pretrains first (`config.pretraining.enabled`)."""
  pretraining = config.get("pretraining")
  return bool(pretraining is not None and pretraining.get("enabled", False))


def check(config) -> None:
  """Settings that cannot work together, named by their keys, before anything runs."""
  if not enabled(config):
    return
  if config.init.checkpoint:
    raise ValueError("config.init.checkpoint and config.pretraining.enabled are both set: "
                     "a run starts either from a given checkpoint or from its own pretraining; "
                     "set --config.pretraining.enabled=false to start from the checkpoint")
  if config.init.bert:
    raise ValueError("config.init.bert is set, but the tasks start from the pretraining phase's "
                     "export; set config.pretraining.init.bert to start the pretraining from "
                     "that BERT")
  for key in ("name", "vocab_size"):
    ours, theirs = config.model[key], config.pretraining.model[key]
    if ours != theirs:
      raise ValueError(f"config.pretraining.model.{key}={theirs!r} differs from "
                       f"config.model.{key}={ours!r}: the pretrained parameters must fit the "
                       "model the tasks train")


def pretrain_first(config, workdir: str) -> tuple[str | None, bool]:
  """Runs (or resumes, or finds finished) the pretraining phase.

  Args:
    config: the training config, after `entry.ensure_data`; `config.pretraining` is the
      pretraining config. A pretraining that generates its corpus reads the release the tasks
      were generated into.
    workdir: the run's workdir; the pretraining runs in `<workdir>/pretrain`.

  Returns:
    (the pretrained parameters' location, preempted). The location is None when preempted.
  """
  from twelve_in_one.pretrain.trainer import pretrain   # noqa: PLC0415 (only when enabled)

  pretraining = config.pretraining
  with pretraining.unlocked():
    pretraining.seed = config.seed
    if (config.data.generate_if_missing and pretraining.data.generate_if_missing
        and not pretraining.data.release_dir):
      pretraining.data.release_dir = config.data.release_dir
  target = os.fspath(paths.as_path(workdir) / PRETRAIN_DIR)
  result = pretrain(pretraining, target)
  if result.preempted:
    return None, True
  if result.pretrained is None:
    raise RuntimeError(f"{target}: the pretraining finished without writing its export; rerun "
                       "the command on one process to write it")
  return result.pretrained, False
