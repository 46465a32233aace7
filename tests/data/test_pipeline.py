"""Tests of the grain pipelines over prepared tasks: layout, determinism, resume, sharding,
evaluation passes, the weighted mixture and the float16 decoding."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import grain
import numpy as np
import pytest
from absl import flags

sys.path.insert(0, os.path.dirname(__file__))
from release_fixture import small_task, write_release  # noqa: E402

from twelve_in_one.data import pipeline  # noqa: E402
from twelve_in_one.data.errors import DataError  # noqa: E402
from twelve_in_one.data.examples import build_split  # noqa: E402
from twelve_in_one.data.prepare import prepare  # noqa: E402
from twelve_in_one.data.tfds_format import EXAMPLES, IMAGES, open_prepared  # noqa: E402

PREPARED = {"vqa": ["minval", "test"], "retrieval_coco": ["train", "test"], "nlvr2": ["train"],
            "refcoco": ["train"]}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
  return write_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def data_dir(release, tmp_path_factory) -> Path:
  path = tmp_path_factory.mktemp("prepared")
  for name, splits in PREPARED.items():
    prepare(small_task(name), release, path, splits=splits, progress=False,
            log=lambda line: None)
  return path


def take(iterator, count: int) -> list[dict]:
  return [next(iterator) for _ in range(count)]


def assert_batches_equal(first: list[dict], second: list[dict]) -> None:
  assert len(first) == len(second)
  for one, two in zip(first, second, strict=True):
    assert set(one) == set(two)
    for key in one:
      np.testing.assert_array_equal(one[key], two[key], err_msg=key)


def iterator(data_dir, name, split="train", **kwargs):
  options = dict(seed=7, batch_size_per_process=2, read_threads=0)
  options.update(kwargs)
  return pipeline.task_iterator(small_task(name), data_dir, split, **options)


def test_float16_decoding_is_bit_exact():
  bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
  finite = bits[((bits >> 10) & 31) != 31].view(np.float16)   # all but inf/nan
  out = np.empty(finite.shape, np.float32)
  pipeline.float16_to_float32(finite, out)
  np.testing.assert_array_equal(out.view(np.uint32), finite.astype(np.float32).view(np.uint32))


def test_fast_decoder_matches_tfds(data_dir):
  prepared = open_prepared(small_task("retrieval_coco"), data_dir)
  for config in (EXAMPLES, IMAGES):
    source = prepared.source(config, "train")
    raw, decode = prepared.raw_source(config, "train")
    for index in range(len(source)):
      reference, fast = source[index], decode(raw[index])
      assert set(reference) == set(fast)
      for key, value in reference.items():
        np.testing.assert_array_equal(np.asarray(fast[key]), np.asarray(value), err_msg=key)


def test_train_batches_follow_the_global_order(release, data_dir):
  """Row r of step k is global position g = k*B + r of shuffle(seed).repeat(), built with
  (seed, epoch = g // N, record index) - including the retrieval negatives."""
  task = small_task("retrieval_coco")
  direct = build_split(task, release, "train")
  num = len(direct)
  order = grain.MapDataset.range(num).shuffle(seed=7).repeat()
  batches = take(iterator(data_dir, "retrieval_coco"), 5)     # 10 rows = 2.5 epochs
  for step, batch in enumerate(batches):
    assert batch["image_feat"].dtype == np.float32 and batch["target"].tolist() == [0, 0]
    for row in range(2):
      position = step * 2 + row
      example = direct.example(order[position], seed=7, epoch=position // num)
      np.testing.assert_array_equal(batch["input_ids"][row], example["input_ids"])
      np.testing.assert_array_equal(batch["image_feat"][row],
                                    example["image_feat"].astype(np.float16).astype(np.float32))


def test_determinism_and_resume(data_dir):
  first = iterator(data_dir, "retrieval_coco")
  warmup = take(first, 3)
  state = first.get_state()
  expected = take(first, 4)
  assert_batches_equal(take(iterator(data_dir, "retrieval_coco"), 3), warmup)
  resumed = iterator(data_dir, "retrieval_coco")
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 4), expected)
  other_seed = take(iterator(data_dir, "retrieval_coco", seed=8), 3)
  assert any(not np.array_equal(a["input_ids"], b["input_ids"])
             for a, b in zip(other_seed, warmup, strict=True))


def interleave(per_process: list[dict]) -> dict:
  """Rows of process p at 2j+p: the 1-process order (global position (k*b + j)*P + p)."""
  merged = {}
  for key in per_process[0]:
    stacked = np.stack([batch[key] for batch in per_process], axis=1)
    merged[key] = stacked.reshape((-1,) + stacked.shape[2:])
  return merged


@pytest.mark.parametrize("name, split, train", [("retrieval_coco", "train", True),
                                                ("nlvr2", "train", True),
                                                ("vqa", "minval", False)])
def test_two_processes_give_the_one_process_batches(data_dir, name, split, train):
  single = list(iterator(data_dir, name, split, batch_size_per_process=4, train=train)) \
      if not train else take(iterator(data_dir, name, split, batch_size_per_process=4), 3)
  shards = []
  for process in range(2):
    it = iterator(data_dir, name, split, process_index=process, process_count=2, train=train)
    shards.append(list(it) if not train else take(it, 3))
  assert len(shards[0]) == len(shards[1]) == len(single)   # same step count on every process
  for step, batch in enumerate(single):
    merged = interleave([shards[0][step], shards[1][step]])
    assert set(merged) == set(batch)
    for key in batch:
      np.testing.assert_array_equal(merged[key], batch[key], err_msg=f"step {step} {key}")


def test_eval_pass_pads_the_last_batch(data_dir):
  batches = list(iterator(data_dir, "vqa", "minval", batch_size_per_process=4, train=False))
  assert [b["example_mask"].tolist() for b in batches] == [[1, 1, 1, 1], [1, 1, 0, 0]]
  ids = np.concatenate([b["example_id"] for b in batches])
  assert ids.tolist() == [100, 101, 102, 103, 104, 105, 100, 101]
  assert batches[0]["example_mask"].dtype == np.int32 and ids.dtype == np.int64
  assert batches[1]["image_feat"].shape == (4, 5, 2048)
  test = list(iterator(data_dir, "vqa", "test", batch_size_per_process=2, train=False))
  assert len(test) == 1 and not test[0]["target"].any()


def test_weighted_mixture_restores_by_task_after_weight_change(data_dir):
  def components():
    return {"retrieval_coco": pipeline.task_dataset(small_task("retrieval_coco"), data_dir,
                                                    "train", seed=1, batch_size_per_process=2,
                                                    read_threads=0),
            "nlvr2": pipeline.task_dataset(small_task("nlvr2"), data_dir, "train", seed=1,
                                           batch_size_per_process=2, read_threads=0)}

  mixture = iter(pipeline.weighted_mixture(components(), {"retrieval_coco": 1, "nlvr2": 1}))
  seen = take(mixture, 6)
  assert all(name in ("retrieval_coco", "nlvr2") for name, _ in seen)
  consumed = {name: sum(1 for tag, _ in seen if tag == name) for name in components()}
  assert consumed == {"retrieval_coco": 3, "nlvr2": 3}
  for tag, batch in seen:   # task-homogeneous batches in each task's own layout
    assert batch["input_ids"].shape == ((2, 4, 12) if tag == "retrieval_coco" else (2, 12))
  state = mixture.get_state()
  # Restart with other weights: every task continues where it stopped.
  restarted = iter(pipeline.weighted_mixture(components(), {"retrieval_coco": 3, "nlvr2": 1}))
  restarted.set_state(state)
  after = take(restarted, 8)
  counts = {name: sum(1 for tag, _ in after if tag == name) for name in consumed}
  assert counts["retrieval_coco"] > counts["nlvr2"] > 0
  for name, dataset in components().items():
    alone = take(iter(dataset), consumed[name] + counts[name])[consumed[name]:]
    assert_batches_equal([batch for tag, batch in after if tag == name], alone)
  # A task added on restart starts from its beginning.
  grown = components()
  grown["refcoco"] = pipeline.task_dataset(small_task("refcoco"), data_dir, "train", seed=1,
                                           batch_size_per_process=2, read_threads=0)
  added = iter(pipeline.weighted_mixture(grown, {name: 1 for name in grown}))
  added.set_state(state)
  refcoco = [batch for tag, batch in take(added, 9) if tag == "refcoco"]
  assert_batches_equal(refcoco[:1], take(iter(grown["refcoco"]), 1))
  with pytest.raises(ValueError, match="must name exactly"):
    pipeline.weighted_mixture(components(), {"nlvr2": 1})


def test_worker_processes_give_the_same_batches(data_dir):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()   # grain's worker flags; absl.app.run does this normally
  expected = take(iterator(data_dir, "nlvr2"), 4)
  workers = iterator(data_dir, "nlvr2", num_workers=2)
  try:
    assert_batches_equal(take(workers, 4), expected)
  finally:
    workers.close()


def test_ranking_datasets(data_dir, release):
  captions, images = pipeline.ranking_datasets(small_task("retrieval_coco"), data_dir, "test")
  direct = build_split(small_task("retrieval_coco"), release, "test")
  assert len(captions) == len(direct) == 3 and len(images) == len(direct.image_keys)
  for index in range(len(captions)):
    caption = captions[index]
    np.testing.assert_array_equal(caption["input_ids"], direct.records[index]["input_ids"])
    assert caption["image_index"] == direct.records[index]["image_index"][0]
  image = images[1]
  assert image["image_feat"].shape == (5, 2048) and image["image_feat"].dtype == np.float32
  np.testing.assert_array_equal(image["image_feat"][:len(direct.image(1).features)],
                                direct.image(1).features.astype(np.float16).astype(np.float32))


def test_prepared_data_is_checked_against_the_task(data_dir, tmp_path):
  task = small_task("vqa")
  with pytest.raises(DataError, match="is not prepared"):
    pipeline.num_examples(task, tmp_path, "minval")
  with pytest.raises(ValueError, match="max_region_num"):
    pipeline.num_examples(dataclasses.replace(task, max_region_num=7), data_dir, "minval")
  with pytest.raises(ValueError, match="was not prepared"):
    pipeline.num_examples(task, data_dir, "trainval")
  with pytest.raises(ValueError, match="process_index 2 is not in"):
    pipeline.task_batches(task, data_dir, "test", seed=0, batch_size_per_process=2,
                          process_index=2, process_count=2)
  assert pipeline.num_examples(task, data_dir, "minval") == 6
