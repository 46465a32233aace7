"""`twelve-in-one plot --workdir DIR`: per-task training curves with DSG stop/go marked.

    twelve-in-one plot --workdir /tmp/12in1_smoke            # -> DIR/training_curves.png
    twelve-in-one plot --workdir DIR --tasks vqa,refcoco --out curves.png
    twelve-in-one plot --workdir gs://B/12in1                # -> gs://B/12in1/training_curves.png

Reads `DIR/metrics.jsonl` (it may still be growing); see `twelve_in_one/evaluate/plot.py`.
Both locations may be local or `gs://`.
"""

from __future__ import annotations

from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "the training run's workdir", required=True)
_OUT = flags.DEFINE_string("out", None, "the PNG to write (default DIR/training_curves.png)")
_TASKS = flags.DEFINE_list("tasks", None, "tasks to draw (default: every task logged)")


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  from twelve_in_one import paths
  from twelve_in_one.evaluate.plot import plot_training
  paths.check_bucket(_WORKDIR.value, "--workdir")
  paths.check_bucket(_OUT.value, "--out")
  print(f"wrote {plot_training(_WORKDIR.value, _OUT.value, _TASKS.value)}")
