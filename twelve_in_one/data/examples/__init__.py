"""Per-task example builders: the official release files -> examples in the task batch layout.

`build_split(task, release_dir, split)` reads one split with the annotation readers, tokenizes
it and returns a :class:`SplitExamples` with random access: `split.example(i, seed=, epoch=)`
is example `i` in the layout of `twelve_in_one/tasks/process.py` (float32 features), and
`split.final_record(i)` / `split.image(j)` are the two halves `prepare` stores. Which builder
reads a task is its annotation format, `Task.reader`: a key of :data:`READERS`, to which
`register_reader` adds a new format. See
:mod:`~twelve_in_one.data.examples.common` for why examples are split into records and
images, and each family's module for the construction and the official bugs fixed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from twelve_in_one.data.annotations.common import AnswerVocab
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
    SOFT_TARGET_READERS,
    build_nlvr2_split,
    build_snli_ve_split,
    build_soft_target_split,
)
from twelve_in_one.data.examples.matching import build_retrieval_split
from twelve_in_one.data.tokenizer import Tokenizer

if TYPE_CHECKING:
  from twelve_in_one.tasks.registry import Task

__all__ = [
    "READERS",
    "BuildContext",
    "ImageBlock",
    "Layout",
    "Reader",
    "SplitExamples",
    "assemble_example",
    "build_split",
    "datasets_root",
    "example_rng",
    "iou_plus_one",
    "register_reader",
    "registered_reader",
    "task_reader",
    "task_splits",
    "unregister_reader",
]


@dataclasses.dataclass(frozen=True)
class Reader:
  """An annotation format of the release: how one split of a task in it becomes examples.

  Attributes:
    build: `(context, split) -> SplitExamples`, the task's fields in `context.task`.
    answer_vocab: classifier formats: loads the answer vocabulary (ans2label / label2ans)
      from the task's annotation folder; evaluation names the answers with it.
  """
  build: Callable[[BuildContext, str], SplitExamples]
  answer_vocab: Callable[[str | os.PathLike[str]], AnswerVocab] | None = None


# Annotation format (`Task.reader`) -> its reader. Formats, not tasks: the three RefCOCO
# tasks share "refer", the two retrieval tasks "retrieval".
READERS: dict[str, Reader] = {
    **{name: Reader(build_soft_target_split, load_vocab)
       for name, (_, load_vocab) in SOFT_TARGET_READERS.items()},
    "retrieval": Reader(build_retrieval_split),
    "refer": Reader(build_refer_split),
    "visual7w": Reader(build_visual7w_split),
    "guesswhat": Reader(build_guesswhat_split),
    "nlvr2": Reader(build_nlvr2_split),
    "snli_ve": Reader(build_snli_ve_split),
}


def register_reader(name: str, reader: Reader) -> Reader:
  """Adds an annotation format, for tasks whose `Task.reader` is `name`.

  Raises:
    ValueError: `name` is already a format.
  """
  if name in READERS:
    raise ValueError(f"annotation reader {name!r} is already registered")
  READERS[name] = reader
  return reader


def unregister_reader(name: str) -> Reader:
  """Removes a format added with `register_reader`."""
  if name not in READERS:
    raise ValueError(f"annotation reader {name!r} is not registered; known: {sorted(READERS)}")
  return READERS.pop(name)


@contextlib.contextmanager
def registered_reader(name: str, reader: Reader) -> Iterator[Reader]:
  """`register_reader` for the duration of a `with` block."""
  register_reader(name, reader)
  try:
    yield reader
  finally:
    unregister_reader(name)


def task_reader(task: Task) -> Reader:
  """The reader of `task`'s annotation format.

  Raises:
    ValueError: no reader is registered for it.
  """
  reader = READERS.get(task.reader)
  if reader is None:
    raise ValueError(f"task {task.name}: no annotation reader {task.reader!r} (Task.reader); "
                     f"known: {sorted(READERS)}")
  return reader


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
  build = task_reader(task).build
  if context is None:
    context = BuildContext(task, datasets_root(release_dir), tokenizer or Tokenizer(), clean)
  return build(context, split)
