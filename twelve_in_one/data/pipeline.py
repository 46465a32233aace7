"""grain input pipelines over prepared tasks: one per task, plus a weighted mixture.

Training pipeline of one task (all random-access `MapDataset` steps, so nothing is read that
this process does not need):

    range(N) -> shuffle(seed) -> repeat -> assemble -> [p::P] -> batch(b, drop_remainder)
             -> to_iter_dataset(threads) [-> mp_prefetch(workers)]

* **Process-count invariance.** The global order (shuffle, then repeat with a fresh
  permutation each epoch) is fixed before the process shard `[p::P]`, and every random choice
  (retrieval negatives) is keyed by the *global* (seed, epoch, record index). Step k of process
  p therefore holds global positions `(k*b + j)*P + p`, j < b, and the union of step k over the
  P processes is exactly positions `[k*b*P, (k+1)*b*P)`: the 1-process batch of size `b*P`.
  (Sharding before shuffling, as in `seed -> shard -> shuffle`, would give each process its own
  permutation and break this.)
* **Assemble** reads the example record and its image record(s) from the TFDS sources and
  builds the batch layout of `twelve_in_one/tasks/process.py`; **batch** stacks the rows and
  decodes float16 features straight into the float32 batch buffer (bit-exact, and faster than
  numpy's scalar `astype`).
* **Resume.** The iterator's `get_state()`/`set_state()` is grain's (the next batch index);
  with `num_workers > 0` it includes the workers' states. Pin `num_workers` across restarts.

Evaluation pipelines make one ordered pass; the last batch is completed with repeats of the
first examples flagged `example_mask = 0`, and every process gets the same number of batches.
Eval batches add `example_mask` [B] int32 and `example_id` [B] int64 (the official question,
sentence, QA or caption id).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from twelve_in_one.data.examples.common import Layout, assemble_example, pad_image
from twelve_in_one.data.tfds_format import EXAMPLES, IMAGES, PreparedTask, open_prepared

_F16_TO_F32_SCALE = np.float32(2.0 ** 112)
_CHUNK = 1 << 16


def float16_to_float32(source: np.ndarray, out: np.ndarray) -> np.ndarray:
  """Write `source` (finite float16) into `out` (float32, same size), bit-exactly.

  numpy's float16 cast is scalar code (BENCHMARKS.md, input pipeline); this moves the exponent and mantissa
  into float32 position with integer ops and rescales the exponent bias with one multiply
  (2^(127-15)), which also turns float16 subnormals into the right float32 values. Prepared
  datasets hold only finite values (checked by `prepare`); inf/nan would come out wrong.
  """
  halves = np.ascontiguousarray(source).reshape(-1).view(np.int16)
  words = out.reshape(-1).view(np.int32)
  floats = out.reshape(-1)
  for start in range(0, halves.size, _CHUNK):   # chunks stay in cache between the passes
    stop = start + _CHUNK
    chunk = words[start:stop]
    np.copyto(chunk, halves[start:stop], casting="unsafe")  # sign-extends
    chunk <<= 13
    chunk &= np.int32(-0x70000001)   # 0x8FFFFFFF: keep the sign, clear the extended bits
    floats[start:stop] *= _F16_TO_F32_SCALE
  return out


class PreparedLookup:
  """`Lookup` over a prepared split's records; opens them lazily in each process."""

  def __init__(self, prepared: PreparedTask, split: str) -> None:
    prepared.split_info(split)
    self._path, self._manifest, self._split = prepared.path, prepared.manifest, split
    self._sources: tuple[Any, ...] | None = None

  def _open(self) -> tuple[Any, ...]:
    if self._sources is None:
      prepared = PreparedTask(self._path, self._manifest)
      self._sources = (*prepared.raw_source(EXAMPLES, self._split),
                       *prepared.raw_source(IMAGES, self._split))
    return self._sources

  def record(self, index: int) -> Mapping[str, Any]:
    records, decode, _, _ = self._open()
    return decode(records[index])

  def image(self, index: int) -> Mapping[str, Any]:
    _, _, images, decode = self._open()
    return decode(images[index])

  def __getstate__(self) -> dict[str, Any]:
    # Worker processes reopen the sources rather than receive open file handles.
    return {**self.__dict__, "_sources": None}


class _Assemble(grain.transforms.MapWithIndex):
  """(global position, record index) -> one example in the task layout."""

  def __init__(self, layout: Layout, lookup: PreparedLookup, tables: dict[str, np.ndarray],
               hard_negatives: bool, seed: int, num_records: int, evaluation: bool) -> None:
    self._layout, self._lookup, self._tables = layout, lookup, tables
    self._hard, self._seed, self._num_records = hard_negatives, seed, num_records
    self._evaluation = evaluation

  def map_with_index(self, position: int, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    epoch = 0 if self._evaluation else position // self._num_records
    example = assemble_example(self._layout, index, self._lookup, seed=self._seed, epoch=epoch,
                               tables=self._tables, hard_negatives=self._hard)
    if self._evaluation:
      example["example_mask"] = np.int32(position < self._num_records)
      example["example_id"] = np.int64(self._lookup.record(index)["example_id"])
    return example


class _Collate:
  """Stack examples into a batch; float16 features are decoded into the float32 buffer."""

  def __call__(self, examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    batch = {}
    for key, first in examples[0].items():
      if key == "image_feat":
        out = np.empty((len(examples),) + np.shape(first), np.float32)
        for row, example in enumerate(examples):
          if example[key].dtype == np.float16:
            float16_to_float32(example[key], out[row])
          else:
            out[row] = example[key]
        batch[key] = out
      else:
        batch[key] = np.stack([example[key] for example in examples])
    return batch


def num_examples(task: Any, data_dir: str | os.PathLike[str], split: str) -> int:
  """The number of examples of a prepared split (captions for retrieval)."""
  return int(open_prepared(task, data_dir).split_info(split)["examples"])


def _check_batching(process_index: int, process_count: int, batch_size: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if batch_size < 1:
    raise ValueError(f"batch_size_per_process must be positive, got {batch_size}")


def task_batches(task: Any, data_dir: str | os.PathLike[str], split: str, *, seed: int,
                 process_index: int = 0, process_count: int = 1, batch_size_per_process: int,
                 train: bool = True) -> grain.MapDataset:
  """The batched random-access dataset of one task split (see the module docstring).

  Args:
    task: the registry task (its shape fields must match the prepared data).
    data_dir: where `prepare` wrote the task.
    split: a prepared split.
    seed: shuffle and retrieval-negative seed (use e.g. seed + task_id for per-task streams).
    process_index, process_count: this process's shard (`jax.process_index()/count()`).
    batch_size_per_process: examples per batch on this process (global batch / processes).
    train: shuffled infinite stream; False for one ordered, padded evaluation pass.
  """
  _check_batching(process_index, process_count, batch_size_per_process)
  prepared = open_prepared(task, data_dir)
  info = prepared.split_info(split)
  num_records = int(info["examples"])
  lookup = PreparedLookup(prepared, split)
  assemble = _Assemble(prepared.layout, lookup, prepared.tables(split),
                       bool(info.get("hard_negatives")), seed, num_records, not train)
  if train:
    dataset = grain.MapDataset.range(num_records).shuffle(seed=seed).repeat()
  else:
    global_batch = batch_size_per_process * process_count
    padded = math.ceil(num_records / global_batch) * global_batch
    # Positions past the end repeat early records; `example_mask` marks them as padding.
    dataset = grain.MapDataset.range(padded).map(_Wrap(num_records))
  dataset = dataset.map_with_index(assemble)[process_index::process_count]
  return dataset.batch(batch_size_per_process, drop_remainder=True, batch_fn=_Collate())


class _Wrap(grain.transforms.Map):
  """Position -> record index, wrapping past the end (evaluation padding)."""

  def __init__(self, num_records: int) -> None:
    self._num_records = num_records

  def map(self, position: int) -> int:
    return int(position) % self._num_records


def to_iter_dataset(batches: grain.MapDataset, *, num_workers: int = 0,
                    read_threads: int = 2, prefetch_batches: int = 4) -> grain.IterDataset:
  """Iterate a batched dataset with `read_threads` threads and optional worker processes."""
  dataset = batches.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                      prefetch_buffer_size=prefetch_batches))
  if num_workers > 0:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                               per_worker_buffer_size=2))
  return dataset


def task_dataset(task: Any, data_dir: str | os.PathLike[str], split: str, *, seed: int,
                 process_index: int = 0, process_count: int = 1, batch_size_per_process: int,
                 num_workers: int = 0, read_threads: int = 2, train: bool = True
                 ) -> grain.IterDataset:
  """`task_batches` as an IterDataset, ready for `iter()` or `weighted_mixture`."""
  return to_iter_dataset(
      task_batches(task, data_dir, split, seed=seed, process_index=process_index,
                   process_count=process_count, batch_size_per_process=batch_size_per_process,
                   train=train), num_workers=num_workers, read_threads=read_threads)


def task_iterator(task: Any, data_dir: str | os.PathLike[str], split: str, *, seed: int,
                  process_index: int = 0, process_count: int = 1, batch_size_per_process: int,
                  num_workers: int = 0, read_threads: int = 2, train: bool = True
                  ) -> grain.DatasetIterator:
  """A checkpointable iterator of host batches (`get_state()` / `set_state()`).

  Close it (`it.close()`) when `num_workers > 0`.
  """
  return iter(task_dataset(task, data_dir, split, seed=seed, process_index=process_index,
                           process_count=process_count,
                           batch_size_per_process=batch_size_per_process,
                           num_workers=num_workers, read_threads=read_threads, train=train))


class _Tag(grain.transforms.Map):
  def __init__(self, name: str) -> None:
    self._name = name

  def map(self, batch: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    return self._name, batch


def weighted_mixture(datasets: Mapping[str, grain.IterDataset],
                     weights: Mapping[str, float]) -> grain.IterDataset:
  """Interleave task batches by weight; yields `(task_name, batch)`, one task per batch.

  Uses the dict form of `grain.IterDataset.mix` (deterministic proportional interleaving):
  its state stores each task's iterator state under the task's name, so a restart may change
  the weights, add tasks (they start from their beginning) or drop some. Pass infinite
  (`train=True`) datasets: the mixture stops when any component ends.
  """
  if set(datasets) != set(weights):
    raise ValueError(f"weights {sorted(weights)} must name exactly the datasets "
                     f"{sorted(datasets)}")
  bad = {name: weight for name, weight in weights.items() if not weight > 0}
  if bad:
    raise ValueError(f"mixture weights must be positive; got {bad}")
  tagged = {name: dataset.map(_Tag(name)) for name, dataset in datasets.items()}
  return grain.IterDataset.mix(tagged, {name: float(weights[name]) for name in tagged})


class _Caption(grain.transforms.Map):
  def map(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    ids = np.asarray(record["input_ids"], np.int32)
    return {"input_ids": ids, "input_mask": np.asarray(record["input_mask"], np.int32),
            "segment_ids": np.zeros_like(ids),
            "image_index": np.int32(np.asarray(record["image_index"]).reshape(-1)[0]),
            "example_id": np.int64(record["example_id"])}


class _Image(grain.transforms.Map):
  def __init__(self, regions: int) -> None:
    self._regions = regions

  def map(self, image: Mapping[str, Any]) -> dict[str, np.ndarray]:
    features, loc, mask = pad_image(image, self._regions)
    return {"image_feat": float16_to_float32(features, np.empty(features.shape, np.float32)),
            "image_loc": loc, "image_mask": mask}


def ranking_datasets(task: Any, data_dir: str | os.PathLike[str], split: str = "test"
                     ) -> tuple[grain.MapDataset, grain.MapDataset]:
  """Retrieval's test form: every caption against every image of the split.

  Returns:
    `(captions, images)`: caption `c` has its text and `image_index` (the index of its image
    in `images`) and `example_id`; image `i` has its padded float32 regions. Scoring all pairs
    and computing R@K is the evaluator's job (the official `RetreivalDatasetVal` scores 1000
    images in two blocks of 500 per caption).
  """
  prepared = open_prepared(task, data_dir)
  if prepared.layout.kind != "retrieval":
    raise ValueError(f"task {task.name} is not a retrieval task")
  captions = grain.MapDataset.source(prepared.source(EXAMPLES, split)).map(_Caption())
  images = grain.MapDataset.source(prepared.source(IMAGES, split)).map(
      _Image(prepared.layout.regions))
  return captions, images
