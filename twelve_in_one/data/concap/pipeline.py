"""grain input pipeline of pretraining batches over the prepared Conceptual Captions corpus.

    batches = pretraining_batches(data_dir, "train", seed=0, batch_size_per_process=64)
    iterator = iter(to_iter_dataset(batches))        # get_state() / set_state() resume it

Training: `range(N) -> shuffle(seed) -> repeat -> assemble -> [p::P] -> batch(b)`, the order of
every task pipeline (`data/pipeline.py`), so step k of the P processes together is the
one-process batch of size b*P.

**Masks are a pure function of (seed, epoch, record index).** `assemble` builds the example
with a generator seeded by those three numbers (`masking_rng`), where the epoch is the global
position divided by the record count. The alignment draw, the random other caption, the masked
tokens and regions of a record therefore do not depend on the batch size, the process count,
the reading threads or a restart: a run resumed from grain's iterator state (the next position)
draws exactly the masks an uninterrupted run would, and a fresh epoch draws new ones, as the
official loader re-masks every time it reads a record. (grain's own `random_map` seeds by the
position in its parent; keying by the record index as well keeps a record's masks independent of
the shuffle, which `test_concap` checks.)

Evaluation (`train=False`): one ordered pass with epoch 0, completed to whole global batches by
repeating the first records with every label -1 and `example_mask` 0, so padding adds nothing
to any loss; every process gets the same number of batches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from twelve_in_one.data.concap.masking import (
  PretrainingLayout,
  build_pretraining_example,
  without_labels,
)
from twelve_in_one.data.concap.prepared import (
  CAPTIONS,
  EXAMPLES,
  PreparedCorpus,
  open_corpus,
)
from twelve_in_one.data.pipeline import to_iter_dataset

# Separates the pretraining masks from any other stream keyed by (seed, epoch, index).
_STREAM = 0x636F6E63   # "conc"


def masking_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The generator of one example's masks: a pure function of (seed, epoch, record index)."""
  return np.random.default_rng([_STREAM, int(seed), int(epoch), int(index)])


class CorpusLookup:
  """Random access to a prepared split's example and caption records, opened per process."""

  def __init__(self, corpus: PreparedCorpus, split: str) -> None:
    info = corpus.split_info(split)
    self._path, self._manifest, self._split = corpus.path, corpus.manifest, split
    self.num_examples, self.num_captions = int(info["examples"]), int(info["captions"])
    self._sources: tuple[Any, ...] | None = None

  def _open(self) -> tuple[Any, ...]:
    if self._sources is None:
      corpus = PreparedCorpus(self._path, self._manifest)
      self._sources = (*corpus.raw_source(EXAMPLES, self._split),
                       *corpus.raw_source(CAPTIONS, self._split))
    return self._sources

  def record(self, index: int) -> Mapping[str, Any]:
    """Example record `index` (`prepared.example_features`), zero-copy arrays."""
    records, decode, _, _ = self._open()
    return decode(records[index])

  def caption(self, index: int) -> np.ndarray:
    """The word pieces of caption `index` of the split's caption file."""
    _, _, captions, decode = self._open()
    return decode(captions[index])["caption_ids"]

  def __getstate__(self) -> dict[str, Any]:
    # Worker processes reopen the sources rather than receive open file handles.
    return {**self.__dict__, "_sources": None}


class _Assemble(grain.transforms.MapWithIndex):
  """(global position, record index) -> one masked example."""

  def __init__(self, layout: PretrainingLayout, lookup: CorpusLookup, seed: int,
               draw_negatives: bool, evaluation: bool) -> None:
    self._layout, self._lookup, self._seed = layout, lookup, seed
    self._draw_negatives, self._evaluation = draw_negatives, evaluation

  def map_with_index(self, position: int, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    num_records = self._lookup.num_examples
    epoch = 0 if self._evaluation else position // num_records
    example = build_pretraining_example(
        self._lookup.record(index), self._layout, masking_rng(self._seed, epoch, index),
        self._lookup.caption, self._lookup.num_captions, draw_negatives=self._draw_negatives)
    if self._evaluation:
      real = position < num_records
      if not real:
        without_labels(example)
      example["example_mask"] = np.int32(real)
    return example


class _Wrap(grain.transforms.Map):
  """Position -> record index, wrapping past the end (evaluation padding)."""

  def __init__(self, num_records: int) -> None:
    self._num_records = num_records

  def map(self, position: int) -> int:
    return int(position) % self._num_records


def pretraining_batches(data_dir: str | os.PathLike[str], split: str, *, seed: int,
                        batch_size_per_process: int, process_index: int = 0,
                        process_count: int = 1, train: bool = True,
                        draw_negatives: bool = True) -> grain.MapDataset:
  """The batched random-access dataset of a prepared corpus split (module docstring).

  Args:
    data_dir: where `prepare_corpus` wrote the corpus (local or `gs://`).
    split: a prepared split ("train" or "val").
    seed: the shuffle and masking seed.
    batch_size_per_process: examples per batch on this process (global batch / processes).
    process_index, process_count: this process's shard (`jax.process_index()/count()`).
    train: shuffled infinite stream; False for one ordered, padded evaluation pass.
    draw_negatives: False keeps every pair aligned (`train_concap.py --objective 2`).

  Returns:
    Batches keyed by `masking.BATCH_KEYS` (plus `example_mask` [B] when evaluating).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if batch_size_per_process < 1:
    raise ValueError(f"batch_size_per_process must be positive, got {batch_size_per_process}")
  corpus = open_corpus(data_dir)
  lookup = CorpusLookup(corpus, split)
  assemble = _Assemble(corpus.layout, lookup, seed, draw_negatives, not train)
  num_records = lookup.num_examples
  if train:
    dataset = grain.MapDataset.range(num_records).shuffle(seed=seed).repeat()
  else:
    global_batch = batch_size_per_process * process_count
    padded = math.ceil(num_records / global_batch) * global_batch
    dataset = grain.MapDataset.range(padded).map(_Wrap(num_records))
  dataset = dataset.map_with_index(assemble)[process_index::process_count]
  return dataset.batch(batch_size_per_process, drop_remainder=True)


def pretraining_iterator(data_dir: str | os.PathLike[str], split: str, *, seed: int,
                         batch_size_per_process: int, process_index: int = 0,
                         process_count: int = 1, train: bool = True,
                         draw_negatives: bool = True, num_workers: int = 0,
                         read_threads: int = 2) -> grain.DatasetIterator:
  """A checkpointable iterator of host batches (`get_state()` / `set_state()`).

  Close it (`it.close()`) when `num_workers > 0`; pin `num_workers` across restarts.
  """
  batches = pretraining_batches(data_dir, split, seed=seed,
                                batch_size_per_process=batch_size_per_process,
                                process_index=process_index, process_count=process_count,
                                train=train, draw_negatives=draw_negatives)
  return iter(to_iter_dataset(batches, num_workers=num_workers, read_threads=read_threads))
