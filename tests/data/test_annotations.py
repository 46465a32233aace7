"""Tests of the annotation readers, on tiny release-format fixtures and on real samples.

The real samples live in ``tests/fixtures/realdata`` (see its README).
"""

from __future__ import annotations

import collections
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import ground_truth
from twelve_in_one.data.annotations import clean
from twelve_in_one.data.annotations.common import (
    CLEAN_REASON,
    AnswerVocab,
    build_soft_target,
    load_answer_vocab,
)
from twelve_in_one.data.annotations.genome import load_genome, load_genome_raw
from twelve_in_one.data.annotations.gqa import load_gqa
from twelve_in_one.data.annotations.guesswhat import load_guesswhat
from twelve_in_one.data.annotations.nlvr2 import image_keys, load_nlvr2
from twelve_in_one.data.annotations.refer import load_refer
from twelve_in_one.data.annotations.retrieval import load_hard_negatives, load_retrieval
from twelve_in_one.data.annotations.snli_ve import NO_LABEL_REASON, load_snli_ve
from twelve_in_one.data.annotations.visual7w import load_visual7w
from twelve_in_one.data.annotations.vqa import (
    load_vqa,
    load_vqa_raw,
    soft_score,
    targets_from_raw_annotations,
)
from twelve_in_one.data.errors import DataError

REALDATA = ground_truth.path("realdata")


# Every data file of the real samples, each read by a test below.
REALDATA_FILES = {
    "coco/test.jsonl",
    "flickr30k/test_ann.jsonl",
    "gqa/testdev_balanced_questions.json",
    "gqa/trainval_ans2label.pkl",
    "gqa/trainval_label2ans.pkl",
    "nlvr2/dev.json",
    "nlvr2/test1.json",
    "snli_ve/test.jsonl",
    "visual_genome/question_answers.json",
    "vqa/annotations.json",
    "vqa/questions.json",
}


def test_every_realdata_file_is_covered():
  present = {path.relative_to(REALDATA).as_posix() for path in REALDATA.rglob("*")
             if path.is_file() and path.name != "README.md"}
  assert present == REALDATA_FILES


def dump_pickle(path: Path, value) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(pickle.dumps(value))
  return path


def dump_json(path: Path, value) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value))
  return path


def dump_jsonl(path: Path, records) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(record) + "\n" for record in records))
  return path


def scores_by_label(record: dict) -> dict[int, float]:
  return dict(zip(record["labels"], record["scores"], strict=True))


def read_jsonl_plain(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- shared helpers


def test_soft_target_by_hand():
  target = build_soft_target([3, 0, 3], [0.3, 1.0, 0.6], 5)
  assert target.dtype == np.float32
  # A repeated label keeps the last score, as torch scatter_ does.
  assert target.tolist() == pytest.approx([1.0, 0, 0, 0.6, 0])
  assert not build_soft_target([], [], 3).any()
  with pytest.raises(DataError, match=r"qid 7: label 5 is outside the answer vocabulary"):
    build_soft_target([5], [1.0], 5, source="cache/x.pkl", where="qid 7")


def test_soft_score_table():
  assert [soft_score(count) for count in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]


def test_answer_vocab_consistency(tmp_path):
  good = load_answer_vocab(dump_pickle(tmp_path / "a2l.pkl", {"yes": 1, "no": 0}))
  assert good.label2ans == ["no", "yes"] and good.num_labels == 2
  dump_pickle(tmp_path / "l2a.pkl", ["yes", "no"])
  with pytest.raises(DataError, match=r"l2a.pkl: label 0 \('yes'\)"):
    load_answer_vocab(tmp_path / "a2l.pkl", tmp_path / "l2a.pkl")
  dump_pickle(tmp_path / "gap.pkl", {"yes": 0, "no": 2})
  with pytest.raises(DataError, match=r"not exactly 0\.\.n-1"):
    load_answer_vocab(tmp_path / "gap.pkl")


# --------------------------------------------------------------------------- VQA

VQA_VOCAB = {"net": 0, "netting": 1, "pitcher": 2, "orange": 3, "catcher": 4, "yes": 5}


def write_vqa_root(root: Path, num_val: int = 3002) -> Path:
  """A VQA dataroot: 4 train questions, ``num_val`` val, 2 test; cached targets."""
  def questions(part, ids):
    return {"data_subtype": part, "questions": [
        {"image_id": 1000 + qid % 7, "question": f"question {qid}?", "question_id": qid}
        for qid in ids]}

  def targets(ids):
    return [{"question_id": qid, "image_id": 1000 + qid % 7, "labels": [qid % 6],
             "scores": [1.0]} for qid in ids]

  train_ids = [40, 10, 30, 20]          # unsorted on purpose
  val_ids = list(range(100_000, 100_000 + num_val))[::-1]
  dump_json(root / "v2_OpenEnded_mscoco_train2014_questions.json", questions("train", train_ids))
  dump_json(root / "v2_OpenEnded_mscoco_val2014_questions.json", questions("val", val_ids))
  dump_json(root / "v2_OpenEnded_mscoco_test2015_questions.json", questions("test", [7, 3]))
  dump_pickle(root / "cache" / "train_target.pkl", targets(train_ids)[::-1])
  dump_pickle(root / "cache" / "val_target.pkl", targets(val_ids))
  dump_pickle(root / "cache" / "trainval_ans2label.pkl", VQA_VOCAB)
  dump_pickle(root / "cache" / "trainval_label2ans.pkl",
              sorted(VQA_VOCAB, key=VQA_VOCAB.get))
  return root


@pytest.fixture(scope="module")
def vqa_root(tmp_path_factory) -> Path:
  return write_vqa_root(tmp_path_factory.mktemp("vqa"))


def test_vqa_splits(vqa_root):
  train = load_vqa(vqa_root, "train")
  assert [e["question_id"] for e in train] == [10, 20, 30, 40]
  assert train[0] == {"question_id": 10, "image_id": 1003, "question": "question 10?",
                      "answer": {"labels": [4], "scores": [1.0]}}
  val = load_vqa(vqa_root, "val")
  assert len(val) == 3002 and val[0]["question_id"] == 100_000
  trainval = load_vqa(vqa_root, "trainval")
  assert [e["question_id"] for e in trainval] == [10, 20, 30, 40, 100_000, 100_001]
  minval = load_vqa(vqa_root, "minval")
  assert len(minval) == 3000 and minval[0]["question_id"] == 100_002
  test = load_vqa(vqa_root, "test")
  assert test.entries == [{"question_id": 3, "image_id": 1003, "question": "question 3?"},
                          {"question_id": 7, "image_id": 1000, "question": "question 7?"}]
  target = build_soft_target(**train[1]["answer"], num_labels=6)
  assert target.tolist() == [0, 0, 1.0, 0, 0, 0]   # question 20 -> label 20 % 6 = 2


def test_vqa_clean_filter_only_on_training_splits(vqa_root):
  test_ids = frozenset({1003, 1006})  # images of questions 10, 20 (10%7=3, 20%7=6)
  train = load_vqa(vqa_root, "train", clean_image_ids=test_ids)
  assert [e["question_id"] for e in train] == [30, 40]
  assert train.skipped[CLEAN_REASON] == 2
  trainval = load_vqa(vqa_root, "trainval", clean_image_ids=test_ids)
  kept_val = [q for q in (100_000, 100_001) if 1000 + q % 7 not in test_ids]
  assert [e["question_id"] for e in trainval] == [30, 40, *kept_val]
  assert load_vqa(vqa_root, "minval", clean_image_ids=test_ids).skipped.total == 0


def test_vqa_answer_outside_vocabulary(tmp_path):
  root = write_vqa_root(tmp_path, num_val=3)
  targets = pickle.loads((root / "cache" / "train_target.pkl").read_bytes())
  next(t for t in targets if t["question_id"] == 40)["labels"] = [6]  # vocabulary: 0..5
  dump_pickle(root / "cache" / "train_target.pkl", targets)
  with pytest.raises(DataError) as error:
    load_vqa(root, "train")
  message = str(error.value)
  assert "train_target.pkl" in message and "question_id 40" in message
  assert "outside the answer vocabulary" in message and "[0, 6)" in message


def test_vqa_mismatched_question_and_target(tmp_path):
  root = write_vqa_root(tmp_path, num_val=3)
  targets = pickle.loads((root / "cache" / "train_target.pkl").read_bytes())
  next(t for t in targets if t["question_id"] == 40)["question_id"] = 41
  dump_pickle(root / "cache" / "train_target.pkl", targets)
  with pytest.raises(DataError, match=r"question_id 41: pairs with question 40.*same question"):
    load_vqa(root, "train")
  dump_pickle(root / "cache" / "train_target.pkl", [t for t in targets if t["question_id"] != 41])
  with pytest.raises(DataError, match="3 targets for 4 questions"):
    load_vqa(root, "train")


def test_vqa_empty_split_and_unknown_split(tmp_path):
  root = write_vqa_root(tmp_path, num_val=3)
  dump_json(root / "v2_OpenEnded_mscoco_test2015_questions.json", {"questions": []})
  with pytest.raises(DataError) as error:
    load_vqa(root, "test")
  assert "test2015_questions.json" in str(error.value) and "split 'test'" in str(error.value)
  with pytest.raises(ValueError, match="valid splits"):
    load_vqa(root, "minsval")
  # val has only 3 questions, so minval takes all of it and trainval adds none.
  assert len(load_vqa(root, "trainval")) == 4


def test_vqa_raw_annotations_soft_scores_by_hand():
  questions = REALDATA / "vqa" / "questions.json"
  annotations = REALDATA / "vqa" / "annotations.json"
  vocab = AnswerVocab(VQA_VOCAB, sorted(VQA_VOCAB, key=VQA_VOCAB.get))
  records, skipped = targets_from_raw_annotations(annotations, VQA_VOCAB, questions)
  by_question = {r["question_id"]: r for r in records}
  # 458752000: net x6, netting, mesh, pitcher, orange; "mesh" is not in the vocabulary.
  first = by_question[458752000]
  assert first["image_id"] == 458752
  assert scores_by_label(first) == {0: 1.0, 1: 0.3, 2: 0.3, 3: 0.3}
  # 458752001: pitcher x9, catcher x1.  458752002: orange x10.
  assert scores_by_label(by_question[458752001]) == {2: 1.0, 4: 0.3}
  assert scores_by_label(by_question[458752002]) == {3: 1.0}
  assert skipped.as_dict() == {"answer outside the vocabulary": 1}
  split = load_vqa_raw(questions, annotations, vocab)
  assert split.split == "train2014" and len(split) == 3
  assert split[1]["question"] == "What position is this man playing?"
  target = build_soft_target(**split[0]["answer"], num_labels=vocab.num_labels)
  assert target.tolist() == pytest.approx([1.0, 0.3, 0.3, 0.3, 0.0, 0.0])
  with pytest.raises(DataError, match="no image_id"):
    targets_from_raw_annotations(annotations, VQA_VOCAB)


def test_vqa_real_questions_through_release_layout(tmp_path):
  shutil.copy(REALDATA / "vqa" / "questions.json",
              tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json")
  records, _ = targets_from_raw_annotations(REALDATA / "vqa" / "annotations.json",
                                            VQA_VOCAB, REALDATA / "vqa" / "questions.json")
  dump_pickle(tmp_path / "cache" / "train_target.pkl", records)
  dump_pickle(tmp_path / "cache" / "trainval_ans2label.pkl", VQA_VOCAB)
  dump_pickle(tmp_path / "cache" / "trainval_label2ans.pkl",
              sorted(VQA_VOCAB, key=VQA_VOCAB.get))
  train = load_vqa(tmp_path, "train")
  assert [e["question_id"] for e in train] == [458752000, 458752001, 458752002]
  assert train[2]["answer"] == {"labels": [3], "scores": [1.0]}


# --------------------------------------------------------------------------- GQA and VG-QA


def qa_items(count: int, num_labels: int, image_ids=None):
  return [{"question_id": str(5000 + index) if image_ids is None else 5000 + index,
           "image_id": (image_ids or [str(2354786 + index % 4)])[index % len(image_ids or [0])],
           "question": f"q{index}", "labels": [index % num_labels], "scores": [1.0]}
          for index in range(count)][::-1]


def test_gqa_splits_and_labels(tmp_path):
  vocab = {f"answer{i}": i for i in range(4)}
  dump_pickle(tmp_path / "cache" / "trainval_ans2label.pkl", vocab)
  dump_pickle(tmp_path / "cache" / "trainval_label2ans.pkl", list(vocab))
  dump_pickle(tmp_path / "cache" / "trainval_target.pkl", qa_items(3005, 4))
  dump_pickle(tmp_path / "cache" / "train_target.pkl", qa_items(3, 4))
  trainval = load_gqa(tmp_path, "trainval")
  assert [e["question_id"] for e in trainval] == [5000, 5001, 5002, 5003, 5004]
  assert trainval[1]["image_id"] == "2354787"
  assert len(load_gqa(tmp_path, "minval")) == 3000
  cleaned = load_gqa(tmp_path, "train", clean_image_ids=frozenset({2354786}))
  assert [e["question_id"] for e in cleaned] == [5001, 5002] and cleaned.skipped.total == 1
  assert load_gqa(tmp_path, "minval", clean_image_ids=frozenset({2354786})).skipped.total == 0
  bad_label = {"question_id": "9", "image_id": "1", "question": "q", "labels": [4],
               "scores": [1]}
  dump_pickle(tmp_path / "cache" / "val_target.pkl", [*qa_items(2, 3), bad_label])
  with pytest.raises(DataError, match=r"val_target\.pkl: question_id 9: answer labels"):
    load_gqa(tmp_path, "val")


def test_gqa_real_testdev_and_vocab(tmp_path):
  source = REALDATA / "gqa" / "testdev_balanced_questions.json"
  shutil.copy(source, tmp_path / "testdev_balanced_questions.json")
  test = load_gqa(tmp_path, "test")
  raw = json.loads(source.read_text())
  assert len(test) == len(raw) == 200
  assert test[0] == {"question_id": 201307270, "image_id": "n161313",
                     "question": "Is there either a fence or a snowboard in the photograph?"}
  assert [e["question_id"] for e in test] == [int(key) for key in raw]
  vocab = load_answer_vocab(REALDATA / "gqa" / "trainval_ans2label.pkl",
                            REALDATA / "gqa" / "trainval_label2ans.pkl")
  # This (IGLUE) copy has 1842 answers; the official head has 1533.
  assert vocab.num_labels == 1842
  assert all(vocab.label2ans[vocab.ans2label[a]] == a for a in vocab.ans2label)
  answered = [raw[key]["answer"] for key in raw if raw[key]["answer"] in vocab.ans2label]
  assert len(answered) >= 190  # test-dev answers are nearly all in the vocabulary


def test_genome_splits_and_clean(tmp_path):
  vocab = {"yes": 0, "no": 1, "two": 2}
  dump_pickle(tmp_path / "cache" / "trainval_ans2label.pkl", vocab)
  dump_pickle(tmp_path / "cache" / "trainval_label2ans.pkl", list(vocab))
  dump_pickle(tmp_path / "cache" / "trainval_target.pkl", qa_items(5003, 3, [1, 2, 3]))
  train = load_genome(tmp_path, "train")
  assert [e["question_id"] for e in train] == [5000, 5001, 5002]
  assert train[0]["answer"] == {"labels": [0], "scores": [1.0]}
  val = load_genome(tmp_path, "val")
  assert len(val) == 5000 and val[0]["question_id"] == 5003
  # The VG test ids are removed from both splits, as in the official reader.
  cleaned_val = load_genome(tmp_path, "val", clean_image_ids=frozenset({1}))
  assert cleaned_val.skipped[CLEAN_REASON] == sum(1 for e in val if e["image_id"] == 1)
  assert all(e["image_id"] != 1 for e in cleaned_val)
  with pytest.raises(DataError, match="split 'train': is empty"):
    load_genome(tmp_path, "train", clean_image_ids=frozenset({1, 2, 3}))


def test_genome_real_raw_question_answers():
  split = load_genome_raw(REALDATA / "visual_genome" / "question_answers.json")
  assert len(split) == 8
  assert {e["image_id"] for e in split} == {4, 5}
  assert [e["question_id"] for e in split] == sorted(e["question_id"] for e in split)
  by_id = {e["question_id"]: e for e in split}
  assert by_id[987278] == {"question_id": 987278, "image_id": 4,
                           "question": "What is on the curtains?", "answer": "Sailboats."}


# --------------------------------------------------------------------------- retrieval


def test_retrieval_fixture_and_clean(tmp_path):
  path = dump_jsonl(tmp_path / "train.jsonline", [
      {"id": 9, "sentences": ["a", "b"]},
      {"id": 25, "sentences": ["c"]},
      {"id": 30, "sentences": []},
      {"id": 9, "sentences": ["d"]},
  ])
  split = load_retrieval(path, "coco", "train", clean_image_ids=frozenset({25}))
  assert split.entries == [{"caption": "a", "image_id": 9}, {"caption": "b", "image_id": 9},
                           {"caption": "d", "image_id": 9}]
  assert split.image_ids == [9] and split.captions_of_image == {9: [0, 1, 2]}
  assert split.skipped.as_dict() == {CLEAN_REASON: 1, "image without captions": 1,
                                     "image listed on several lines (captions merged)": 1}
  # Only the training split is cleaned.
  assert len(load_retrieval(path, "coco", "val", clean_image_ids=frozenset({25}))) == 4
  flickr = dump_jsonl(tmp_path / "f.jsonl", [{"img_path": "flickr30k/123.jpg",
                                              "sentences": ["x"]}])
  assert load_retrieval(flickr, "flickr30k").entries == [{"caption": "x", "image_id": 123}]


def test_retrieval_malformed_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"id": 1, "sentences": ["ok"]}\n{"id": 2, "sentences": ["no end"\n')
  with pytest.raises(DataError) as error:
    load_retrieval(path, "coco")
  assert str(path) in str(error.value) and "line 2" in str(error.value)
  assert "malformed JSON" in str(error.value)
  dump_jsonl(path, [{"img_path": "abc.jpg", "sentences": ["x"]}])
  with pytest.raises(DataError, match=r"line 1: img_path \'abc\.jpg\'"):
    load_retrieval(path, "flickr30k")
  dump_jsonl(path, [{"sentences": ["x"]}])
  with pytest.raises(DataError, match=r"line 1: lacks fields \['id'\]"):
    load_retrieval(path, "coco")


def test_hard_negative_pool(tmp_path):
  pool = np.array([[0, 2, 1], [1, 0, 2], [2, 1, 0]])
  path = dump_pickle(tmp_path / "hard_negative.pkl",
                     {"train_image_list": [9, 25, 30], "train_hard_pool": pool})
  loaded = load_hard_negatives(path)
  assert loaded.pool.dtype == np.int64 and loaded.row_of == {9: 0, 25: 1, 30: 2}
  assert loaded.candidates(25) == [9, 30]   # pool positions 1.. of image 25's row
  dump_pickle(path, {"train_image_list": [9, 25], "train_hard_pool": pool})
  with pytest.raises(DataError, match=r"train_hard_pool: has shape \(3, 3\)"):
    load_hard_negatives(path)
  dump_pickle(path, {"train_image_list": [9, 25, 30], "train_hard_pool": pool + 1})
  with pytest.raises(DataError, match=r"train_hard_pool row 0, column 1: holds index 3;"):
    load_hard_negatives(path)


def test_retrieval_real_coco_and_flickr():
  coco_path = REALDATA / "coco" / "test.jsonl"
  raw = read_jsonl_plain(coco_path)
  coco = load_retrieval(coco_path, "coco", "val")
  assert len(coco.image_ids) == len(raw) == 200
  assert coco.image_ids == [record["id"] for record in raw]
  assert len(coco) == sum(len(record["sentences"]) for record in raw) == 200
  assert coco[0] == {"caption": "A man with a red helmet on a small moped on a dirt road. ",
                     "image_id": 391895}
  flickr_path = REALDATA / "flickr30k" / "test_ann.jsonl"
  raw = read_jsonl_plain(flickr_path)
  flickr = load_retrieval(flickr_path, "flickr30k", "val")
  # The image id comes from img_path; it must agree with the (string) "id" field.
  assert flickr.image_ids == [int(record["id"]) for record in raw]
  assert len(flickr) == 1000 and all(len(v) == 5 for v in flickr.captions_of_image.values())
  assert flickr.captions_of_image[1007129816] == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- RefCOCO


def write_refer(root: Path, split_by: str, splits) -> Path:
  refs = []
  for index, split in enumerate(splits):
    refs.append({"ref_id": 100 + index, "ann_id": 500 + index, "image_id": 9 + index % 2,
                 "split": split, "category_id": 1, "sent_ids": [10 * index, 10 * index + 1],
                 "sentences": [{"raw": f"Left man {index}", "sent": f"left man {index}",
                                "sent_id": 10 * index, "tokens": ["left", "man"]},
                               {"raw": f"Guy {index}", "sent": f"guy {index}",
                                "sent_id": 10 * index + 1, "tokens": ["guy"]}]})
  dump_pickle(root / f"refs({split_by}).p", refs)
  dump_json(root / "instances.json", {
      "images": [{"id": 9, "width": 640, "height": 480}, {"id": 10, "width": 640,
                                                          "height": 480}],
      "annotations": [{"id": 500 + index, "image_id": 9 + index % 2, "category_id": 1,
                       "bbox": [10.0 * index, 20.0, 30.5, 40.0]}
                      for index in range(len(splits))],
      "categories": [{"id": 1, "name": "person"}]})
  return root


def test_refer_unc_splits(tmp_path):
  root = write_refer(tmp_path, "unc", ["train", "val", "testA", "testB", "train"])
  train = load_refer(root, "train")
  assert [e["ref_id"] for e in train] == [100, 100, 104, 104]
  assert train[0] == {"caption": "Left man 0", "sent_id": 0, "image_id": 9,
                      "ref_box": [0.0, 20.0, 30.5, 60.0], "ref_id": 100}
  assert train[2]["ref_box"] == [40.0, 20.0, 70.5, 60.0]
  assert [e["sent_id"] for e in load_refer(root, "testA")] == [20, 21]
  assert [e["caption"] for e in load_refer(root, "testB")] == ["Left man 3", "Guy 3"]
  # Both train refs are on image 9: cleaning it empties the split.
  with pytest.raises(DataError, match=r"refs\(unc\).p: split 'train': is empty"):
    load_refer(root, "train", clean_image_ids=frozenset({9}))
  with pytest.raises(ValueError, match="valid splits"):
    load_refer(root, "test")


def test_refer_clean_and_umd(tmp_path):
  root = write_refer(tmp_path, "umd", ["train", "val", "test", "train"])
  train = load_refer(root, "train", "umd", clean_image_ids=frozenset({9}))
  # refs 100 (image 9) and 103 (image 10) are train; image 9 is a test image.
  assert [e["ref_id"] for e in train] == [103, 103]
  assert train.skipped[CLEAN_REASON] == 2
  assert [e["ref_id"] for e in load_refer(root, "test", "umd")] == [102, 102]
  with pytest.raises(DataError, match="split 'train': is empty"):
    load_refer(root, "train", "umd", clean_image_ids=frozenset({9, 10}))


def test_refer_missing_annotation(tmp_path):
  root = write_refer(tmp_path, "unc", ["train", "val"])
  instances = json.loads((root / "instances.json").read_text())
  instances["annotations"] = instances["annotations"][:1]
  dump_json(root / "instances.json", instances)
  assert len(load_refer(root, "train")) == 2
  with pytest.raises(DataError, match=r"refs\(unc\).p: ref_id 101: ann_id 501 is not in"):
    load_refer(root, "val")
  with pytest.raises(DataError, match=r"refs\(umd\).p: file: does not exist"):
    load_refer(root, "val", "umd")


# --------------------------------------------------------------------------- Visual7W


def write_visual7w(root: Path) -> Path:
  return dump_json(root / "dataset_v7w_pointing.json", {
      "boxes": [{"box_id": box_id, "x": box_id, "y": 2, "width": 10, "height": 20,
                 "name": "thing"} for box_id in (11, 12, 13, 14, 15, 16, 17)],
      "images": [
          {"image_id": 2345, "split": "train", "qa_pairs": [
              {"qa_id": 1, "question": "Which is red?", "answer": 14,
               "multiple_choices": [12, 16, 11], "type": "which"},
              {"qa_id": 2, "question": "Which is blue?", "answer": 11,
               "multiple_choices": [17, 13, 12], "type": "which"}]},
          {"image_id": 2346, "split": "val", "qa_pairs": [
              {"qa_id": 3, "question": "Which one?", "answer": 15,
               "multiple_choices": [16, 17, 13], "type": "which"}]},
      ]}).parent


def test_visual7w_multiple_choice_indices(tmp_path):
  root = write_visual7w(tmp_path)
  train = load_visual7w(root, "train")
  # Image 2345's GT boxes, sorted unique: 11 12 13 14 16 17.
  assert train[0]["gt_box_ids"] == [11, 12, 13, 14, 16, 17]
  assert train[0]["mc_idx"] == [0, 1, 3, 4]       # boxes 11 12 14 16
  assert train[1]["mc_idx"] == [0, 1, 2, 5]       # boxes 11 12 13 17
  assert train[0]["ref_box"] == [14.0, 2.0, 24.0, 22.0] and train[0]["ref_id"] == 14
  assert train[0]["feature_key"] == "v7w_2345" and train[0]["caption"] == "Which is red?"
  assert load_visual7w(root, "val")[0]["mc_idx"] == [0, 1, 2, 3]
  with pytest.raises(DataError, match="split 'train': is empty"):
    load_visual7w(root, "train", clean_image_ids=frozenset({2345}))
  data = json.loads((root / "dataset_v7w_pointing.json").read_text())
  data["boxes"] = data["boxes"][1:]   # drop box 11
  dump_json(root / "dataset_v7w_pointing.json", data)
  with pytest.raises(DataError, match=r"qa_id 1: names box ids \[11\]"):
    load_visual7w(root, "train")


# --------------------------------------------------------------------------- GuessWhat


def write_guesswhat(root: Path) -> Path:
  games = [
      {"id": 7, "image": {"id": 391895, "width": 640}, "object_id": 303, "status": "success",
       "objects": [{"id": 303, "category": "person"}, {"id": 301, "category": "car"}],
       "qas": [{"id": 1, "question": "is it a person?", "answer": "Yes"},
               {"id": 2, "question": "is it on the left?", "answer": "No"}]},
      {"id": 8, "image": {"id": 60623}, "object_id": 402, "status": "failure",
       "objects": [{"id": 402}], "qas": [{"id": 3, "question": "a cake?", "answer": "N/A"}]},
  ]
  dump_jsonl(root / "guesswhat.train.jsonl", games)
  dump_jsonl(root / "guesswhat.valid.jsonl", games[1:])
  dump_pickle(root / "cache" / "image_bbox_list.pkl", {
      391895: {"bboxes": [305, 301, 303, 302, 303]}, 60623: {"bboxes": [402, 401]}})
  dump_pickle(root / "cache" / "bboxes_dict.pkl", {
      301: [0, 0, 5, 5], 302: [1, 1, 6, 6], 303: [10.0, 20.0, 110.0, 220.0],
      305: [2, 2, 3, 3], 401: [0, 0, 1, 1], 402: [5, 5, 50, 50]})
  return root


def test_guesswhat_dialogue_and_candidates(tmp_path):
  root = write_guesswhat(tmp_path)
  train = load_guesswhat(root, "train")
  first = train[0]
  assert first["dialogue"] == ("start is it a person? answer Yes stop "
                               "start is it on the left? answer No stop ")
  assert first["candidate_object_ids"] == [301, 303]
  assert first["mc_idx"] == [0, 2]                  # in sorted unique [301 302 303 305]
  assert first["ref_box"] == [10.0, 20.0, 110.0, 220.0] and first["ref_id"] == 303
  assert (first["dialog_id"], first["image_id"]) == (7, 391895)
  assert train[1]["mc_idx"] == [1] and train[1]["dialogue"] == "start a cake? answer N/A stop "
  cleaned = load_guesswhat(root, "train", clean_image_ids=frozenset({60623}))
  assert [e["dialog_id"] for e in cleaned] == [7] and cleaned.skipped[CLEAN_REASON] == 1
  assert len(load_guesswhat(root, "valid", clean_image_ids=frozenset({60623}))) == 1


def test_guesswhat_missing_object_and_bad_line(tmp_path):
  root = write_guesswhat(tmp_path)
  dump_pickle(root / "cache" / "image_bbox_list.pkl",
              {391895: {"bboxes": [301, 302]}, 60623: {"bboxes": [402]}})
  with pytest.raises(DataError, match=r"line 1: objects \[303\] are not in image 391895"):
    load_guesswhat(root, "train")
  with open(root / "guesswhat.valid.jsonl", "a") as handle:
    handle.write("{not json}\n")
  with pytest.raises(DataError, match=r"guesswhat.valid.jsonl: line 2: malformed JSON"):
    load_guesswhat(root, "valid")


# --------------------------------------------------------------------------- NLVR2


def test_nlvr2_real_dev_and_test1():
  for split, count in (("dev", 250), ("test1", 100)):
    raw = read_jsonl_plain(REALDATA / "nlvr2" / f"{split}.json")
    loaded = load_nlvr2(REALDATA / "nlvr2", split)
    assert len(loaded) == len(raw) == count
    assert [e["answer"]["labels"][0] for e in loaded] == [
        1 if record["label"] == "True" else 0 for record in raw]
    assert [e["question_id"] for e in loaded] == list(range(count))
  first = load_nlvr2(REALDATA / "nlvr2", "dev")[0]
  assert (first["image_id_0"], first["image_id_1"]) == ("dev-850-0-img0", "dev-850-0-img1")
  assert first["answer"] == {"labels": [0], "scores": [1.0]}
  assert build_soft_target(**first["answer"], num_labels=2).tolist() == [1.0, 0.0]


def test_nlvr2_bad_label_and_empty(tmp_path):
  assert image_keys("train-10171-0-0") == ("train-10171-0-img0", "train-10171-0-img1")
  dump_jsonl(tmp_path / "train.json", [
      {"identifier": "train-1-0-0", "sentence": "s", "label": "True"},
      {"identifier": "train-1-1-0", "sentence": "s", "label": "maybe"}])
  with pytest.raises(DataError, match=r"line 2 \(train-1-1-0\): label 'maybe'"):
    load_nlvr2(tmp_path, "train")
  (tmp_path / "dev.json").write_text("\n\n")
  with pytest.raises(DataError, match=r"dev\.json: split \'dev\': is empty"):
    load_nlvr2(tmp_path, "dev")


# --------------------------------------------------------------------------- SNLI-VE


def test_snli_ve_real_test(tmp_path):
  source = REALDATA / "snli_ve" / "test.jsonl"
  raw = read_jsonl_plain(source)
  shutil.copy(source, tmp_path / "snli_ve_test.jsonl")   # the official file name
  test = load_snli_ve(tmp_path, "test")
  assert len(test) == len(raw) == 500
  unlabeled = [i for i, record in enumerate(raw) if record["gold_label"] == "-"]
  assert len(unlabeled) == 6 and test.skipped[NO_LABEL_REASON] == 6
  for index in unlabeled:
    assert not build_soft_target(**test[index]["answer"], num_labels=3).any()
  counts = collections.Counter(e["answer"]["labels"][0] for e in test if e["answer"]["labels"])
  raw_counts = collections.Counter(record["gold_label"] for record in raw)
  assert counts == {0: raw_counts["contradiction"], 1: raw_counts["neutral"],
                    2: raw_counts["entailment"]}
  assert test[0] == {"question_id": 0, "image_id": 759822302,
                     "hypothesis": "He is wearing the newspaper on his head.",
                     "answer": {"labels": [0], "scores": [1.0]}}


def test_snli_ve_real_train_clean_renumbers(tmp_path):
  raw = read_jsonl_plain(REALDATA / "snli_ve" / "test.jsonl")
  shutil.copy(REALDATA / "snli_ve" / "test.jsonl", tmp_path / "snli_ve_train.jsonl")
  removed = {759822302, 2245916742}
  train = load_snli_ve(tmp_path, "train", clean_image_ids=frozenset(removed))
  expected_drop = sum(1 for record in raw if int(record["Flikr30kID"]) in removed)
  assert expected_drop > 0 and train.skipped[CLEAN_REASON] == expected_drop
  assert len(train) == 500 - expected_drop
  assert [e["question_id"] for e in train] == list(range(len(train)))


def test_snli_ve_jpg_ids_and_bad_label(tmp_path):
  dump_jsonl(tmp_path / "snli_ve_dev.jsonl", [
      {"Flikr30kID": "3416050480.jpg", "sentence2": "A dog.", "gold_label": "entailment"},
      {"Flikr30kID": "3416050480.jpg", "sentence2": "A cat.", "gold_label": "cat"}])
  with pytest.raises(DataError, match=r"line 2: gold_label 'cat'"):
    load_snli_ve(tmp_path, "dev")
  dump_jsonl(tmp_path / "snli_ve_dev.jsonl", [
      {"Flikr30kID": "3416050480.jpg", "sentence2": "A dog.", "gold_label": "entailment"}])
  assert load_snli_ve(tmp_path, "dev")[0]["image_id"] == 3416050480


# --------------------------------------------------------------------------- clean


def test_clean_test_ids(tmp_path):
  cache = tmp_path / "cache"
  cache.mkdir()
  np.save(cache / "coco_test_ids.npy", np.array([9, 25]))
  np.save(cache / "flickr_test_ids.npy", np.array(["123", "456"]))
  ids = clean.load_test_image_ids(cache, ["coco", "flickr"])
  assert ids == frozenset({9, 25, 123, 456})
  entries = [{"image_id": 9}, {"image_id": "25"}, {"image_id": 10}, {"image_id": "n161313"}]
  kept, dropped = clean.drop_test_images(entries, ids)
  assert kept == [{"image_id": 10}, {"image_id": "n161313"}] and dropped == 2
  mteval, other = clean.keep_test_images(entries, ids)
  assert mteval == entries[:2] and other == 2
  with pytest.raises(DataError, match=r"genome_test_ids\.npy: file: does not exist"):
    clean.load_test_image_ids(cache, ["genome"])
  with pytest.raises(ValueError, match="unknown test-id source"):
    clean.clean_ids_path(cache, "vg")
