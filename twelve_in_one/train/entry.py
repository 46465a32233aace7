"""The train command's library entry: make the data ready if asked, then train and evaluate.

With `config.data.generate_if_missing` (the `smoke` main job), a fresh machine needs nothing
downloaded: the mini 12-in-1 is generated in the release's own formats, prepared with the same
readers and `prepare` as the real release, and then trained on. Both steps are idempotent, so a
rerun (or a resumed run) reuses them. With a gs:// workdir the generated release (feature
LMDBs, which are read from local files) stays in this machine's cache, and the prepared
datasets go to the bucket beside the run.

With `config.pretraining.enabled` the run pretrains first (`train/pretraining_phase.py`) and
trains the tasks from the pretrained parameters; the generated release then also holds the
pretraining's caption corpus.
"""

from __future__ import annotations

import copy
import logging
import os

from twelve_in_one import paths

from twelve_in_one.train import pretraining_phase
from twelve_in_one.train.loop import RunResult, train_and_evaluate
from twelve_in_one.train.validate import resolve_tasks


def generated_release_dir(workdir: str) -> str:
  """Where the smoke job generates the mini release: `<workdir>/release`, or, for a gs://
  workdir, this machine's cache (its feature LMDBs must be local files)."""
  if paths.is_remote(workdir):
    return os.fspath(paths.local_mirror_of(workdir) / "release")
  return os.path.join(workdir, "release")


def ensure_data(config, workdir: str) -> dict | None:
  """Generates and prepares the embedded release when configured; returns its summary."""
  if config.data.source != "tfds" or not config.data.generate_if_missing:
    return None
  from twelve_in_one.data.generate import generate, read_summary
  from twelve_in_one.data.prepare import prepare

  root = config.data.release_dir or generated_release_dir(workdir)
  with config.unlocked():
    config.data.data_dir = config.data.data_dir or os.path.join(workdir, "prepared")
    config.data.release_dir = root
  summary = read_summary(root)
  if summary is None:
    logging.info("generating the mini 12-in-1 release into %s", root)
    if pretraining_phase.enabled(config):
      # The pretraining phase's caption corpus comes from the same scenes, in the same release.
      data = config.pretraining.data
      summary = generate(root, seed=config.seed, num_images=data.num_images,
                         num_val_images=data.num_val_images, pretraining_corpus=True)
    else:
      summary = generate(root, seed=config.seed)
  for task in resolve_tasks(config):
    prepare(task, os.path.join(root, "datasets"), config.data.data_dir,
            vocab_path=config.data.vocab or None, progress=False, log=logging.info)
  return summary


def run_training(config, workdir: str) -> RunResult:
  """`twelve-in-one train` without the flag parsing (tests call this directly)."""
  pretraining_phase.check(config)
  summary = ensure_data(config, workdir)
  if pretraining_phase.enabled(config):
    pretrained, preempted = pretraining_phase.pretrain_first(config, workdir)
    if preempted:
      return RunResult(iterations=0, results={}, state=None, compilations={}, preempted=True)
    config = copy.deepcopy(config)   # the caller's config still says "pretrain first"
    with config.unlocked():
      config.init.checkpoint = pretrained
  chance = None
  if summary is not None:
    chance = {name: entry["baselines"]["chance"] for name, entry in summary["tasks"].items()}
  return train_and_evaluate(config, workdir, chance=chance)
