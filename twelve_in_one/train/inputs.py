"""The trainer's view of each task's data: a resumable train iterator and one-pass validation.

Two sources, chosen by `config.data.source`:

* `tfds`: the prepared TFDS datasets (`twelve-in-one prepare`) through the grain pipelines of
  `twelve_in_one.data.pipeline`: the real path, for the release and for the generated benchmark.
* `synthetic`: random batches of the task's exact layout (`tasks/examples.py`), through a grain
  dataset so that they are resumable in the same way. For tests and speed measurements only:
  nothing can be learned from them.

Either way the trainer sees `TaskData`: `train_iterator()` gives a grain iterator with
`get_state`/`set_state` over per-process host batches, `eval_batches()` one pass of validation
batches whose `example_mask` marks the real rows, and `num_train_examples` sizes the epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import grain
import numpy as np

from twelve_in_one.tasks.examples import random_batch
from twelve_in_one.tasks.registry import Task


@dataclasses.dataclass
class TaskData:
  task: Task
  num_train_examples: int
  train_iterator: Callable[[], Any]
  eval_batches: Callable[[], Iterator[dict]]
  num_eval_examples: int
  # Width of the answer targets when the data fixes it (the release's answer vocabulary);
  # None for synthetic data, which follows the model.
  num_classes: int | None = None


def _task_seed(seed: int, task: Task) -> int:
  return int(np.random.SeedSequence([seed, task.task_id]).generate_state(1)[0])


def synthetic_task_data(task: Task, *, batch_size_per_process: int, seed: int,
                        process_index: int, process_count: int, num_train_examples: int,
                        num_eval_examples: int, vocab_size: int, feature_size: int,
                        seq_len: int | None = None,
                        num_regions: int | None = None) -> TaskData:
  """Random batches in the task's layout; global batch i is a pure function of (seed, task, i).

  Each process keeps its own rows of the global batch, so the union over processes (and so
  training) is the same whatever the number of processes.
  """
  base = _task_seed(seed, task)
  rows = slice(process_index * batch_size_per_process,
               (process_index + 1) * batch_size_per_process)

  def make(index):
    batch = random_batch(task, batch_size_per_process * process_count, seed=base + int(index),
                         vocab_size=vocab_size, feature_size=feature_size, seq_len=seq_len,
                         num_regions=num_regions)
    return {key: value[rows] for key, value in batch.items()}

  dataset = grain.MapDataset.range(0, 1 << 40).map(make)

  def eval_batches():
    num_batches = -(-num_eval_examples // batch_size_per_process)
    for index in range(num_batches):
      batch = make((1 << 41) + index)
      real = min(batch_size_per_process, num_eval_examples - index * batch_size_per_process)
      batch["example_mask"] = (np.arange(batch_size_per_process) < real).astype(np.float32)
      yield batch

  return TaskData(task, num_train_examples, lambda: iter(dataset.to_iter_dataset()),
                  eval_batches, num_eval_examples)


def tfds_task_data(task: Task, *, data_dir: str, batch_size_per_process: int, seed: int,
                   process_index: int, process_count: int, num_workers: int = 0) -> TaskData:
  """The prepared dataset of a task through the grain pipeline of the data package."""
  from twelve_in_one.data import pipeline   # the data package is only needed on this path
  from twelve_in_one.data.tfds_format import open_prepared

  train_split, val_split = task.train_split, task.val_split
  num_classes = open_prepared(task, data_dir).layout.num_classes or None
  num_train = pipeline.num_examples(task, data_dir, train_split)
  num_eval = pipeline.num_examples(task, data_dir, val_split)

  def train_iterator():
    return pipeline.task_iterator(task, data_dir, train_split, seed=seed,
                                  process_index=process_index, process_count=process_count,
                                  batch_size_per_process=batch_size_per_process,
                                  num_workers=num_workers, train=True)

  def eval_batches():
    return pipeline.task_iterator(task, data_dir, val_split, seed=seed,
                                  process_index=process_index, process_count=process_count,
                                  batch_size_per_process=batch_size_per_process,
                                  num_workers=0, train=False)

  return TaskData(task, num_train, train_iterator, eval_batches, num_eval, num_classes)
