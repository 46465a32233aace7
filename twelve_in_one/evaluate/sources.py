"""Where evaluation reads its examples: the prepared datasets, or synthetic ones for tests.

Both sources give, per task and split, one pass of eval batches in the trainer's layout (with
`example_mask` and, for prepared data, the official `example_id`), the retrieval ranking form
(every caption and every image), and the answer vocabulary of the question-answering tasks.

* `PreparedSource`: the datasets written by `twelve-in-one prepare` (the trainer's `tfds`
  source), through the same grain pipelines; the answer strings (label2ans) come from the
  release's `cache/trainval_label2ans.pkl`, which the prepared data does not copy.
* `SyntheticSource`: the trainer's `synthetic` source (random batches of the exact layout),
  with a small random ranking set. Nothing can be learned from it; it exercises the code path.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterator, Sequence

import numpy as np
from etils import epath

from twelve_in_one import paths
from twelve_in_one.tasks.registry import Task
from twelve_in_one.train.inputs import synthetic_task_data

# The files the answer-vocabulary loaders read, under `<task dataroot>/cache/`.
VOCAB_FILES = ("trainval_ans2label.pkl", "trainval_label2ans.pkl")


@dataclasses.dataclass
class Ranking:
  """A retrieval split in ranking form."""
  captions: dict[str, np.ndarray]    # input_ids, input_mask, segment_ids: [C, T]
  caption_image: np.ndarray          # [C] index of each caption's image in `images`
  caption_ids: np.ndarray            # [C] official caption ids
  images: Sequence[dict[str, np.ndarray]]   # image_feat [R, F], image_loc [R, 5], image_mask


def answer_vocabulary(task: Task, release_dir: str) -> list[str] | None:
  """label2ans of a question-answering task from a release; None for other tasks or no release.

  The loader is the one of the task's annotation format (`data.examples.READERS`).

  The release may be local or on `gs://`; from a bucket, the two vocabulary pickles are copied
  to this machine's cache first (the annotation readers open local files).

  Raises:
    FileNotFoundError: the release lacks the task's annotation folder or vocabulary files.
    DataError: its `cache/trainval_label2ans.pkl` is missing or malformed (named).
  """
  from twelve_in_one.data.examples import READERS
  reader = READERS.get(task.reader)
  loader = None if reader is None else reader.answer_vocab
  if loader is None or not release_dir:
    return None
  dataroot = release_root(release_dir) / task.dataroot
  if not dataroot.is_dir():
    raise FileNotFoundError(f"{dataroot}: the answer vocabulary of task {task.name} should be "
                            "under this folder of the release")
  if paths.is_remote(dataroot):
    local = paths.local_mirror_of(dataroot)
    (local / "cache").mkdir(parents=True, exist_ok=True)
    for file_name in VOCAB_FILES:
      source = dataroot / "cache" / file_name
      if not source.is_file():
        raise FileNotFoundError(f"{source}: missing; the answer vocabulary of task {task.name} "
                                "is read from it")
      paths.copy_file(source, local / "cache" / file_name)   # small: always the current one
    dataroot = local
  return list(loader(os.fspath(dataroot)).label2ans)


def release_root(release_dir: str) -> epath.Path:
  """The release's `datasets/` folder if present, else `release_dir`, local or `gs://`.

  `data.examples.context.datasets_root` with epath: a pathlib path would turn `gs://b` into
  the local `gs:/b`.
  """
  root = paths.as_path(release_dir)
  return root / "datasets" if (root / "datasets").is_dir() else root


class FirstImages:
  """The first `count` items of a random-access image sequence (the 1k protocol on 5k)."""

  def __init__(self, images: Sequence[Any], count: int) -> None:
    self._images, self._count = images, count

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> Any:
    if not 0 <= index < self._count:
      raise IndexError(index)
    return self._images[index]


class PreparedSource:
  """Eval batches and ranking sets from prepared datasets under `data_dir`."""

  def __init__(self, data_dir: str, release_dir: str = "", *, seed: int = 0,
               process_index: int = 0, process_count: int = 1) -> None:
    if not data_dir:
      raise ValueError("config.data.data_dir is empty; set it to where `twelve-in-one "
                       "prepare` wrote the tasks")
    self.data_dir, self.release_dir = data_dir, release_dir
    self.seed, self.process_index, self.process_count = seed, process_index, process_count

  def num_examples(self, task: Task, split: str) -> int:
    from twelve_in_one.data import pipeline
    return pipeline.num_examples(task, self.data_dir, split)

  def batches(self, task: Task, split: str) -> tuple[Iterator[dict], int]:
    """(one ordered pass of eval batches, number of batches)."""
    from twelve_in_one.data import pipeline
    examples = self.num_examples(task, split)
    iterator = pipeline.task_iterator(
        task, self.data_dir, split, seed=self.seed, process_index=self.process_index,
        process_count=self.process_count,
        batch_size_per_process=task.batch_size // self.process_count, num_workers=0,
        train=False)
    return iterator, math.ceil(examples / task.batch_size)

  def ranking(self, task: Task, split: str) -> Ranking:
    from twelve_in_one.data import pipeline
    captions, images = pipeline.ranking_datasets(task, self.data_dir, split)
    items = [captions[i] for i in range(len(captions))]
    texts = {k: np.stack([item[k] for item in items]) for k in ("input_ids", "input_mask",
                                                                "segment_ids")}
    return Ranking(texts, np.asarray([item["image_index"] for item in items], np.int64),
                   np.asarray([item["example_id"] for item in items], np.int64), images)

  def label2ans(self, task: Task) -> list[str] | None:
    """The task's answer strings from the release, or None when no release is configured."""
    return answer_vocabulary(task, self.release_dir)


class SyntheticSource:
  """The trainer's synthetic eval batches; a 4-image, 20-caption random ranking set."""

  def __init__(self, config, model_config, *, process_index: int = 0,
               process_count: int = 1) -> None:
    self.config, self.model_config = config, model_config
    self.process_index, self.process_count = process_index, process_count

  def _data(self, task: Task):
    data = self.config.data
    return synthetic_task_data(
        task, batch_size_per_process=task.batch_size // self.process_count,
        seed=self.config.seed, process_index=self.process_index,
        process_count=self.process_count, num_train_examples=1,
        num_eval_examples=data.synthetic_eval_examples,
        vocab_size=self.model_config.vocab_size, feature_size=self.model_config.v_feature_size,
        seq_len=data.synthetic_seq_len or None, num_regions=data.synthetic_num_regions or None)

  def num_examples(self, task: Task, split: str) -> int:
    del task, split
    return int(self.config.data.synthetic_eval_examples)

  def batches(self, task: Task, split: str) -> tuple[Iterator[dict], int]:
    del split   # synthetic data has one eval set, whatever the split is called
    data = self._data(task)
    return data.eval_batches(), math.ceil(data.num_eval_examples / task.batch_size)

  def ranking(self, task: Task, split: str, num_images: int = 4,
              captions_per_image: int = 5) -> Ranking:
    del split
    rng = np.random.default_rng([self.config.seed, task.task_id])
    seq_len = self.config.data.synthetic_seq_len or task.max_seq_length
    regions = self.config.data.synthetic_num_regions or task.max_region_num
    count = num_images * captions_per_image
    vocab = self.model_config.vocab_size
    ids = rng.integers(min(1000, vocab // 2), vocab, size=(count, seq_len)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102     # [CLS] ... [SEP]
    texts = {"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": np.zeros_like(ids)}
    images = []
    for _ in range(num_images):
      loc = np.tile(np.asarray([[0.1, 0.1, 0.6, 0.6, 0.25]], np.float32), (regions, 1))
      loc[0] = [0, 0, 1, 1, 1]
      images.append({"image_feat": rng.random((regions, self.model_config.v_feature_size),
                                              dtype=np.float32),
                     "image_loc": loc, "image_mask": np.ones((regions,), np.int32)})
    caption_image = np.repeat(np.arange(num_images), captions_per_image)
    return Ranking(texts, caption_image, np.arange(count, dtype=np.int64), images)

  def label2ans(self, task: Task) -> list[str] | None:
    del task
    return None
