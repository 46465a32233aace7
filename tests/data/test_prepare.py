"""Tests of the example builders and of `prepare`, on a tiny release written on the fly.

Targets are checked by hand against the explicit boxes of `release_fixture`; prepare's output
is read back through the pipeline and compared with the examples built directly.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from release_fixture import (  # noqa: E402
    GUESSWHAT_BOXES,
    HARD_POOL,
    small_task,
    write_release,
)

from twelve_in_one.data import pipeline  # noqa: E402
from twelve_in_one.data.errors import DataError  # noqa: E402
from twelve_in_one.data.examples import build_split, iou_plus_one, task_splits  # noqa: E402
from twelve_in_one.data.features import FeatureLMDB, close_feature_lmdb  # noqa: E402
from twelve_in_one.data.prepare import prepare  # noqa: E402
from twelve_in_one.data.tfds_format import MANIFEST, open_prepared  # noqa: E402
from twelve_in_one.data.tokenizer import Tokenizer  # noqa: E402
from twelve_in_one.tasks.examples import random_batch  # noqa: E402
from twelve_in_one.tasks.registry import get_task  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
# Splits the tiny release can fill (VG-QA keeps its last 5000 questions for val; GQA's
# trainval/minval are cut from the end of a 3000+ question file).
SPLITS = {"vqa": ["trainval", "minval", "test"], "genome_qa": ["train"],
          "gqa": ["train", "val", "test"], "retrieval_coco": ["train", "val", "test"],
          "retrieval_flickr30k": ["train", "val"],
          "refcoco": ["train", "val", "testA", "testB"], "refcoco_plus": ["train", "val"],
          "refcocog": ["train", "val", "test"], "visual7w": ["train", "val", "test"],
          "guesswhat_pointing": ["train", "valid", "test"], "nlvr2": ["train", "dev", "test"],
          "snli_ve": ["train", "dev", "test"]}
quiet = {"progress": False, "log": lambda line: None}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
  return write_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
  return Tokenizer()


def split_of(release, tokenizer, name, split):
  return build_split(small_task(name), release, split, tokenizer=tokenizer)


# --------------------------------------------------------------------------- examples


def test_vqa_soft_targets_and_regions(release, tokenizer):
  trainval = split_of(release, tokenizer, "vqa", "trainval")
  # Question 40 is on COCO test image 42: dropped by the clean filter, and counted.
  assert [int(r["example_id"]) for r in trainval.records] == [10, 20, 30]
  assert trainval.skipped.as_dict() == {"image in a test set (clean filter)": 1}
  example = trainval.example(0)
  expected = np.zeros(6, np.float32)
  expected[[4, 5]] = [1.0, 0.3]            # labels 10 % 6, 11 % 6 with scores 1.0, 0.3
  np.testing.assert_array_equal(example["target"], expected)
  image = FeatureLMDB(release / "datasets" / small_task("vqa").features)[9]
  # 6 boxes + the global region, cut to max_region_num = 5 in detector order.
  np.testing.assert_array_equal(example["image_feat"], image.features[:5])
  np.testing.assert_array_equal(example["image_loc"][0], [0, 0, 1, 1, 1])
  assert example["image_mask"].tolist() == [1] * 5
  assert example["input_ids"][0] == 101 and 102 in example["input_ids"]
  assert example["input_mask"].sum() == np.count_nonzero(example["input_ids"])
  assert not split_of(release, tokenizer, "vqa", "test").example(1)["target"].any()
  genome = split_of(release, tokenizer, "genome_qa", "train").example(2)
  assert genome["target"][2] == pytest.approx(0.9) and genome["target"].sum() == pytest.approx(0.9)
  gqa = split_of(release, tokenizer, "gqa", "train")
  assert gqa.image_keys == ["2354786", "n161313"] and gqa.example(0)["target"].tolist() == [
      0, 0, 1]


def test_every_task_matches_the_random_batch_layout(release, tokenizer):
  for name, splits in SPLITS.items():
    task = small_task(name)
    split = split_of(release, tokenizer, name, splits[0])
    examples = [split.example(index, seed=1) for index in range(2)]
    batch = {key: np.stack([example[key] for example in examples]) for key in examples[0]}
    reference = random_batch(task, 2, seq_len=task.max_seq_length,
                             num_regions=task.max_region_num, num_vqa_answers=6,
                             num_gqa_answers=3)
    assert set(batch) == set(reference), name
    for key, value in reference.items():
      # GuessWhat: every game's candidates padded to max_region_num - detected - 1 (here 5),
      # in both (Task.num_candidates).
      assert (batch[key].shape, batch[key].dtype) == (value.shape, value.dtype), (name, key)


def test_retrieval_four_options(release, tokenizer):
  train = split_of(release, tokenizer, "retrieval_coco", "train")
  assert train.image_keys == ["9", "25", "30"] and len(train) == 4   # image 42 is cleaned
  caption_image = [int(r["image_index"][0]) for r in train.records]
  for index in range(len(train)):
    example = train.example(index, seed=5)
    own, image = train.records[index], caption_image[index]
    feats = example["image_feat"]
    own_feats = train.example(index, seed=6)["image_feat"][0]
    assert example["target"] == 0 and example["input_ids"].shape == (4, 12)
    np.testing.assert_array_equal(example["input_ids"][0], own["input_ids"])
    np.testing.assert_array_equal(example["input_ids"][2], own["input_ids"])
    for option in (0, 1, 3):
      np.testing.assert_array_equal(feats[option], own_feats)
    assert not np.array_equal(feats[2], own_feats)   # a random other image
    other = [i for i in range(len(train)) if caption_image[i] != image]
    assert any(np.array_equal(example["input_ids"][1], train.records[i]["input_ids"])
               for i in other)
    # Option 4: a caption of the image's only hard negative.
    hard = HARD_POOL[image][1]
    assert any(np.array_equal(example["input_ids"][3], train.records[i]["input_ids"])
               for i in range(len(train)) if caption_image[i] == hard)
  # Deterministic in (seed, epoch, index); fresh negatives across epochs.
  first = train.example(1, seed=5)
  np.testing.assert_array_equal(first["input_ids"], train.example(1, seed=5)["input_ids"])
  epochs = {train.example(1, seed=5, epoch=e)["input_ids"].tobytes() for e in range(8)}
  assert len(epochs) > 1
  val = split_of(release, tokenizer, "retrieval_flickr30k", "val")
  assert not val.hard_negatives and val.example(0)["image_feat"].shape == (4, 5, 2048)


def test_refcoco_keeps_gt_boxes_and_thresholds_in_training(release, tokenizer):
  train = split_of(release, tokenizer, "refcoco", "train")
  example = train.example(0)
  task = small_task("refcoco")
  detected = FeatureLMDB(release / "datasets" / task.features)[9]
  gt = FeatureLMDB(release / "datasets" / task.gt_features)[9]
  # Rows: global, 2 detections, then both GT boxes (the tail of the 6 detected rows is
  # replaced; the official cap would have kept 5 detected rows and no GT box).
  np.testing.assert_array_equal(example["image_feat"][:3], detected.features[:3])
  np.testing.assert_array_equal(example["image_feat"][3:], gt.features[1:3])
  # Ref box [10, 20, 40.5, 60]: global ~0.004 -> 0, d1 0.127 -> 0, d2 and GT 500 identical.
  assert example["target"][:, 0].tolist() == [0, 0, 1, 1, 0]
  val = split_of(release, tokenizer, "refcoco", "val").example(0)
  # Detected only, raw IoU with [300, 300, 350, 350]: d3 = [300, 300, 400, 400].
  assert val["target"][3, 0] == pytest.approx(51 * 51 / (101 * 101))
  assert val["target"][0, 0] == pytest.approx(51 * 51 / (641 * 481))   # whole-image region
  assert val["target"][[1, 2, 4], 0].tolist() == [0, 0, 0]
  assert iou_plus_one([[0, 0, 9, 9]], [0, 0, 4, 9])[0] == pytest.approx(0.5)
  refcocog = split_of(release, tokenizer, "refcocog", "test")
  assert [int(r["example_id"]) for r in refcocog.records] == [1020, 1030]


def test_visual7w_candidates_after_detected_regions(release, tokenizer):
  train = split_of(release, tokenizer, "visual7w", "train")
  example = train.example(0)     # answer 14, choices 12 16 11 -> sorted 11 12 14 16
  assert example["multiple_choice_ids"].tolist() == [0, 1, 3, 4]
  assert example["target"][:, 0].tolist() == [0, 0, 1, 0]
  # 4 detected rows, 6 GT boxes (11 12 13 14 16 17), 2 padding rows.
  assert example["image_mask"].tolist() == [1] * 10 + [0, 0]
  val = split_of(release, tokenizer, "visual7w", "val").example(0)
  # Image 2346 has 2 detections (3 rows): row 3 is a masked gap so GT boxes start at row 4.
  assert val["image_mask"].tolist() == [1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0]
  assert not val["image_feat"][3].any()
  assert val["multiple_choice_ids"].tolist() == [0, 1, 2, 3]
  assert val["target"][:, 0].tolist() == [0, 1, 0, 0]


def test_guesswhat_padded_candidates(release, tokenizer):
  train = split_of(release, tokenizer, "guesswhat_pointing", "train").example(0)
  # Objects 301, 303 in the image's sorted list 301 302 303 305; pad id 5 (= 10 - 4 - 1).
  assert train["multiple_choice_ids"].tolist() == [0, 2, 5, 5, 5]
  assert train["target"][:, 0].tolist() == [0, 1, 0, 0, 0]
  assert train["image_mask"].tolist() == [1] * 8 + [0, 0]   # row 9 (the pad id) stays empty
  valid = split_of(release, tokenizer, "guesswhat_pointing", "valid").example(0)
  # Target 302: box 301 overlaps it with IoU 41*41/3521 = 0.477 < 0.5 -> 0.
  assert iou_plus_one([GUESSWHAT_BOXES[301]], GUESSWHAT_BOXES[302])[0] == pytest.approx(
      1681 / 3521)
  assert valid["multiple_choice_ids"].tolist() == [0, 1, 2, 3, 5]
  assert valid["target"][:, 0].tolist() == [0, 1, 0, 0, 0]


def test_nlvr2_pads_each_image_and_snli_ve_labels(release, tokenizer):
  nlvr2 = split_of(release, tokenizer, "nlvr2", "train")
  example = nlvr2.example(0)    # train-1-0-img0 has 2 boxes (3 rows), img1 5 boxes (6 -> 5)
  assert example["image_mask"].tolist() == [1, 1, 1, 0, 0, 1, 1, 1, 1, 1]
  np.testing.assert_array_equal(example["image_loc"][5], [0, 0, 1, 1, 1])  # image 1's global
  assert example["target"].tolist() == [0, 1] and nlvr2.example(1)["target"].tolist() == [1, 0]
  train = split_of(release, tokenizer, "snli_ve", "train")
  assert [r["target"].tolist() for r in train.records] == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
  dev = split_of(release, tokenizer, "snli_ve", "dev")
  assert dev.records[1]["target"].tolist() == [0, 0, 0]      # gold_label "-"
  assert sum(dev.skipped.as_dict().values()) == 1


# --------------------------------------------------------------------------- prepare


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_prepare_round_trip(release, tokenizer, tmp_path, name):
  task = small_task(name)
  summary = prepare(task, release, tmp_path, splits=SPLITS[name], **quiet)
  assert not summary.up_to_date
  for split_name in SPLITS[name]:
    direct = build_split(task, release, split_name, tokenizer=tokenizer)
    assert summary.splits[split_name]["examples"] == len(direct)
    rows = []
    for batch in pipeline.task_iterator(task, tmp_path, split_name, seed=3,
                                        batch_size_per_process=2, train=False, read_threads=0):
      rows += [{key: value[row] for key, value in batch.items()}
               for row in range(2) if batch["example_mask"][row]]
    assert len(rows) == len(direct)
    for index, row in enumerate(rows):
      example = direct.example(index, seed=3)
      assert int(row.pop("example_id")) == int(direct.records[index]["example_id"])
      row.pop("example_mask")
      assert set(row) == set(example)
      for key, value in example.items():
        # Stored float16: equal to the direct float32 features rounded to float16.
        want = value.astype(np.float16).astype(np.float32) if key == "image_feat" else value
        np.testing.assert_array_equal(row[key], want, err_msg=f"{name}/{split_name}/{key}")


def test_prepare_is_idempotent(release, tmp_path):
  task = small_task("snli_ve")
  first = prepare(task, release, tmp_path, **quiet)
  assert first.splits["train"]["skipped"] == {"image in a test set (clean filter)": 1}
  shard = next((tmp_path / "snli_ve" / "images" / "1.0.0").glob("*train*"))
  mtime = shard.stat().st_mtime_ns
  lines = []
  again = prepare(task, release, tmp_path, progress=False, log=lines.append)
  assert again.up_to_date and "nothing to do" in lines[-1]
  assert shard.stat().st_mtime_ns == mtime and again.splits == json.loads(
      (tmp_path / "snli_ve" / MANIFEST).read_text())["splits"]
  assert not prepare(task, release, tmp_path, overwrite=True, **quiet).up_to_date
  # A changed input file (newer mtime) makes it rebuild.
  source = release / "datasets" / "visual_entailment" / "snli_ve_test.jsonl"
  os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
  assert not prepare(task, release, tmp_path, **quiet).up_to_date
  assert prepare(task, release, tmp_path, splits=["dev"], **quiet).splits.keys() == {"dev"}


def test_interrupted_prepare_leaves_nothing_complete(release, tmp_path, monkeypatch):
  from twelve_in_one.data import prepare as prepare_module
  task = small_task("nlvr2")
  real_write_metadata = prepare_module.write_metadata

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt   # every shard is written by now: the most complete-looking point

  monkeypatch.setattr(prepare_module, "write_metadata", interrupted)
  with pytest.raises(KeyboardInterrupt):
    prepare(task, release, tmp_path, **quiet)
  assert sorted(os.listdir(tmp_path)) == []
  with pytest.raises(DataError, match="is not prepared"):
    open_prepared(task, tmp_path)
  # A run killed outright leaves its hidden build folder; the next run removes it.
  (tmp_path / ".nlvr2.incomplete-999999999-dead").mkdir()
  monkeypatch.setattr(prepare_module, "write_metadata", real_write_metadata)
  prepare(task, release, tmp_path, **quiet)
  assert sorted(os.listdir(tmp_path)) == ["nlvr2"]
  # An interrupted rebuild keeps the complete older dataset in place.
  monkeypatch.setattr(prepare_module, "write_metadata", interrupted)
  with pytest.raises(KeyboardInterrupt):
    prepare(task, release, tmp_path, overwrite=True, **quiet)
  assert sorted(os.listdir(tmp_path)) == ["nlvr2"]
  assert pipeline.num_examples(task, tmp_path, "train") == 3


def _fresh_release(tmp_path: Path) -> Path:
  return write_release(tmp_path / "release")


def _rewrite_pickle(path: Path, change) -> None:
  path.write_bytes(pickle.dumps(change(pickle.loads(path.read_bytes()))))


def _expect_error(task_name, release, data_dir, *fragments, splits=None):
  task = small_task(task_name)
  with pytest.raises(DataError) as error:
    prepare(task, release, data_dir, splits=splits, **quiet)
  for fragment in fragments:
    assert fragment in str(error.value), (fragment, str(error.value))
  assert not (data_dir / task.name).exists() and not list(data_dir.glob(".*"))
  return str(error.value)


def _missing_image(release):
  """An image id missing from the LMDB: the feature file, the id, the question needing it."""
  vqa = release / "datasets" / "VQA"
  questions = vqa / "v2_OpenEnded_mscoco_train2014_questions.json"
  content = json.loads(questions.read_text())
  content["questions"][0]["image_id"] = 12345
  questions.write_text(json.dumps(content))
  _rewrite_pickle(vqa / "cache" / "train_target.pkl",
                  lambda targets: [{**t, "image_id": 12345} if t["question_id"] == 10 else t
                                   for t in targets])
  coco = release / "datasets" / small_task("vqa").features
  return "vqa", ["trainval"], [str(coco), "image id '12345'", str(questions), "question_id 10"]


def _answer_outside_vocabulary(release):
  """An answer outside the vocabulary: the target pickle and the question id."""
  _rewrite_pickle(release / "datasets" / "VQA" / "cache" / "train_target.pkl",
                  lambda targets: [{**t, "labels": [99, 1]} if t["question_id"] == 10 else t
                                   for t in targets])
  return "vqa", ["trainval"], ["train_target.pkl", "question_id 10",
                               "outside the answer vocabulary"]


def _malformed_json_line(release):
  """A malformed JSON line: the file and the line number."""
  lines = release / "datasets" / "cocoRetreival" / "all_data_final_train_2014.jsonline"
  lines.write_text(lines.read_text() + '{"id": 9, "sentences": ["unterminated"\n')
  return "retrieval_coco", None, [str(lines), "line 5", "malformed JSON"]


def _empty_split(release):
  empty = release / "datasets" / "visual_entailment" / "snli_ve_dev.jsonl"
  empty.write_text("")
  return "snli_ve", None, [str(empty), "split 'dev': is empty"]


def _box_outside_image(release):
  """A box outside its image in the feature file: the file, the image id, the box."""
  path = release / "datasets" / small_task("snli_ve").features
  close_feature_lmdb(path)
  env = lmdb.open(str(path), map_size=1 << 26)
  with env.begin(write=True) as txn:
    item = pickle.loads(txn.get(b"1001"))
    item["boxes"][1] = [10, 10, 900, 50]          # the image is 500 wide
    txn.put(b"1001", pickle.dumps(item))
  env.close()
  return "snli_ve", None, [str(path), "image id '1001', box 1", "outside the 500x333 image"]


def _lmdb_without_keys(release):
  """The NLVR2 file loses b"keys", as an interrupted convert_to_lmdb.py leaves it."""
  nlvr2 = release / "datasets" / small_task("nlvr2").features
  close_feature_lmdb(nlvr2)
  env = lmdb.open(str(nlvr2), map_size=1 << 26)
  with env.begin(write=True) as txn:
    txn.delete(b"keys")
  env.close()
  return "nlvr2", None, [str(nlvr2), "b'keys'", "interrupted"]


def _annotated_box_outside_image(release):
  """An annotated box outside its image (RefCOCO): the refs file and the ref."""
  instances = release / "datasets" / "refcoco" / "refcoco" / "instances.json"
  content = json.loads(instances.read_text())
  content["annotations"][0]["bbox"] = [600, 400, 100, 100]
  instances.write_text(json.dumps(content))
  return "refcoco", ["train"], ["refs(unc).p", "ref_id 100", "outside its 640x480 image"]


@pytest.mark.parametrize("damage", [
    _missing_image, _answer_outside_vocabulary, _malformed_json_line, _empty_split,
    _box_outside_image, _lmdb_without_keys, _annotated_box_outside_image],
    ids=lambda damage: damage.__name__.strip("_"))
def test_bad_input_is_named_and_nothing_looks_prepared(tmp_path, damage):
  release = _fresh_release(tmp_path)
  task, splits, fragments = damage(release)
  _expect_error(task, release, tmp_path / "prepared", *fragments, splits=splits)


def test_prepare_command(release, tmp_path):
  command = [sys.executable, "-m", "twelve_in_one.cli", "prepare", "--task=VisualEntailment",
             f"--release_dir={release}", f"--data_dir={tmp_path}", "--noprogress"]
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  assert "snli_ve: prepared in" in result.stdout and "train" in result.stdout
  official = get_task("snli_ve")          # the command prepares the official shapes
  assert open_prepared(official, tmp_path).splits == task_splits(official) == [
      "train", "dev", "test"]
  bad = subprocess.run(command[:-2] + [f"--data_dir={tmp_path}", "--splits=nope"],
                       capture_output=True, text=True, cwd=REPO_ROOT)
  assert bad.returncode != 0 and "nope" in bad.stderr


def test_builders_and_prepare_import_no_jax():
  # Of the tasks package only the registry, which is plain data.
  code = ("import sys; import twelve_in_one.data.prepare, twelve_in_one.data.examples; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', "
          "'tensorflow', 'torch') or m.startswith(('twelve_in_one.models', "
          "'twelve_in_one.tasks.')) and m != 'twelve_in_one.tasks.registry'))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=REPO_ROOT)
  assert result.stdout.strip() == "[]"
