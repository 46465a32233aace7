"""Per-task example builders: the official release files -> examples in the task batch layout.

`build_split(task, release_dir, split)` reads one split with the annotation readers, tokenizes
it and returns a :class:`SplitExamples` with random access: `split.example(i, seed=, epoch=)`
is example `i` in the layout of `twelve_in_one/tasks/process.py` (float32 features), and
`split.final_record(i)` / `split.image(j)` are the two halves `prepare` stores. See
:mod:`~twelve_in_one.data.examples.common` for why examples are split into records and
images, and each family's module for the construction and the official bugs fixed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from twelve_in_one.data.examples.common import (
    ImageBlock,
    Layout,
    SplitExamples,
    assemble_example,
    example_rng,
    iou_plus_one,
)
from twelve_in_one.data.examples.context import BuildContext, datasets_root
from twelve_in_one.data.examples.grounding import (
    build_guesswhat_split,
    build_refer_split,
    build_visual7w_split,
)
from twelve_in_one.data.examples.qa import (
    build_nlvr2_split,
    build_snli_ve_split,
    build_soft_target_split,
)
from twelve_in_one.data.examples.retrieval import build_retrieval_split
from twelve_in_one.data.tokenizer import Tokenizer

if TYPE_CHECKING:
  from twelve_in_one.tasks.registry import Task

__all__ = [
    "BUILDERS",
    "BuildContext",
    "ImageBlock",
    "Layout",
    "SplitExamples",
    "assemble_example",
    "build_split",
    "datasets_root",
    "example_rng",
    "iou_plus_one",
    "task_splits",
]

# Task dataset -> builder of one split.
BUILDERS: dict[str, Callable[[BuildContext, str], SplitExamples]] = {
    "vqa": build_soft_target_split,
    "genome_qa": build_soft_target_split,
    "gqa": build_soft_target_split,
    "retrieval_coco": build_retrieval_split,
    "retrieval_flickr30k": build_retrieval_split,
    "refcoco": build_refer_split,
    "refcoco_plus": build_refer_split,
    "refcocog": build_refer_split,
    "visual7w": build_visual7w_split,
    "guesswhat_pointing": build_guesswhat_split,
    "nlvr2": build_nlvr2_split,
    "snli_ve": build_snli_ve_split,
}


def task_splits(task: Task) -> list[str]:
  """The task's train, val and eval splits, without repeats, in that order."""
  splits: list[str] = []
  for split in (task.train_split, task.val_split, *task.eval_splits):
    if split not in splits:
      splits.append(split)
  return splits


def build_split(task: Task, release_dir: str | os.PathLike[str], split: str, *,
                tokenizer: Tokenizer | None = None, clean: bool = True,
                context: BuildContext | None = None) -> SplitExamples:
  """Build one split of `task` from the release under `release_dir`.

  Args:
    task: the registry task (fields such as `max_region_num` may be replaced).
    release_dir: the release root (holding `datasets/`) or its `datasets/` folder.
    split: one of the task's splits.
    tokenizer: the WordPiece tokenizer (default: the checked bert-base-uncased vocabulary).
    clean: drop training images of any task's test set, as the official default does.
    context: reuse an open context (feature readers, tokenizer) across splits.

  Raises:
    DataError: bad input, naming the file and the record.
  """
  builder = BUILDERS.get(task.dataset)
  if builder is None:
    raise ValueError(f"task {task.name}: no example builder for dataset {task.dataset!r}; "
                     f"known: {sorted(BUILDERS)}")
  if context is None:
    context = BuildContext(task, datasets_root(release_dir), tokenizer or Tokenizer(), clean)
  return builder(context, split)
