"""The train command's library entry: make the data ready if asked, then train and evaluate."""

from __future__ import annotations

from twelve_in_one.train.loop import RunResult, train_and_evaluate


def run_training(config, workdir: str) -> RunResult:
  """`twelve-in-one train` without the flag parsing (tests call this directly)."""
  return train_and_evaluate(config, workdir)
