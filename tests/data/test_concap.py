"""The Conceptual Captions data path: release format, masking rules, prepare and grain batches.

The release format is checked against the decoder the official loader uses: msgpack_numpy's
`packb`/`unpackb` with tensorpack's options (the official `deserialize_lmdb` parameters), on
bytes this project's writer wrote, and the reader is run on databases written the way
tensorpack writes them. Masking statistics use 5-sigma binomial bounds on fixed seeds.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import grain
import lmdb
import msgpack
import msgpack_numpy
import numpy as np
import pytest

from twelve_in_one import paths
from twelve_in_one.data.concap import masking, region_geometry, wire
from twelve_in_one.data.concap.masking import BATCH_KEYS, PretrainingLayout
from twelve_in_one.data.concap.pipeline import (
    CorpusLookup,
    masking_rng,
    pretraining_batches,
    pretraining_iterator,
)
from twelve_in_one.data.concap.prepare import prepare_corpus
from twelve_in_one.data.concap.prepared import CORPUS_NAME, open_corpus
from twelve_in_one.data.concap.release import (
    FIELDS,
    CaptionedImage,
    ConcapLMDB,
    read_captions,
)
from twelve_in_one.data.concap.writer import record_key, write_concap_lmdb, write_split
from twelve_in_one.data.errors import DataError
from twelve_in_one.data.prepare import prepare

FEATURES, CLASSES, MAX_BOXES, SEQ_LEN = 8, 6, 5, 12
WORDS = ["a", "man", "dog", "riding", "bicycle", "street", "red", "car", "near", "the", "park",
         "with", "two", "children", "playing"]
quiet = {"progress": False, "log": lambda line: None}


def make_record(rng: np.random.Generator, index: int, num_boxes: int = MAX_BOXES
                ) -> CaptionedImage:
  width, height = 640, 480
  corners = rng.uniform(0, [width * 0.6, height * 0.6], size=(num_boxes, 2))
  sizes = rng.uniform(10, [width * 0.4, height * 0.4], size=(num_boxes, 2))
  logits = rng.normal(size=(num_boxes, CLASSES))
  target = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  caption = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 16))))
  return CaptionedImage(rng.normal(size=(num_boxes, FEATURES)).astype(np.float32),
                        target.astype(np.float32),
                        np.concatenate([corners, corners + sizes], 1).astype(np.float32),
                        num_boxes, height, width, f"img{index}", caption)


def make_records(count: int, seed: int = 0) -> list[CaptionedImage]:
  rng = np.random.default_rng(seed)
  return [make_record(rng, index, int(rng.integers(1, MAX_BOXES + 1))) for index in range(count)]


def assert_same_record(read: CaptionedImage, written: CaptionedImage) -> None:
  for field in FIELDS[:3]:
    np.testing.assert_array_equal(getattr(read, field), getattr(written, field))
  for field in FIELDS[3:]:
    assert getattr(read, field) == getattr(written, field), field


# ---------------------------------------------------------------------------------------------
# Release format: bytes, writer, reader.


def test_wire_bytes_are_msgpack_numpy_bytes():
  record = make_record(np.random.default_rng(1), 0)
  datapoint = record.to_datapoint()
  datapoint[3] = np.int64(datapoint[3])          # a numpy scalar, as extraction scripts leave it
  ours = wire.dumps(datapoint)
  assert ours == msgpack_numpy.packb(datapoint, use_bin_type=True)
  official = msgpack_numpy.unpackb(ours, **wire.UNPACK_OPTIONS)
  mine = wire.loads(msgpack_numpy.packb(datapoint, use_bin_type=True))
  for decoded in (official, mine):
    for got, want in zip(decoded, datapoint, strict=True):
      np.testing.assert_array_equal(got, want)
      assert np.asarray(got).dtype == np.asarray(want).dtype
  # msgpack_numpy versions before `b"kind"` wrote maps without it.
  old = msgpack.packb({b"nd": True, b"type": "<f4", b"shape": [2], b"data": b"\0" * 8})
  np.testing.assert_array_equal(wire.loads(old), np.zeros(2, np.float32))


def test_writer_writes_what_the_official_loader_decodes(tmp_path):
  records = make_records(3)
  lmdb_path, caption_path = write_split(tmp_path, "train", records)
  assert lmdb_path.name == "training_feat_all.lmdb" and lmdb_path.is_file()  # one data file
  assert caption_path.name == "caption_train.json"
  environment = lmdb.open(os.fspath(lmdb_path), subdir=False, readonly=True, lock=False)
  with environment.begin() as txn:
    stored = {bytes(key): bytes(value) for key, value in txn.cursor()}
  environment.close()
  keys = [f"{index:08}".encode() for index in range(3)]
  assert sorted(stored) == sorted(keys + [b"__keys__"])
  # Plain msgpack with the official `deserialize_lmdb` options, no numpy hook: the raw layout.
  assert msgpack.loads(stored[b"__keys__"], **wire.UNPACK_OPTIONS) == keys
  raw = msgpack.loads(stored[keys[1]], **wire.UNPACK_OPTIONS)
  assert isinstance(raw, list) and len(raw) == 8
  feature_map = raw[0]
  assert feature_map == {b"nd": True, b"type": "<f4", b"kind": b"",
                         b"shape": [records[1].num_boxes, FEATURES],
                         b"data": records[1].image_feature_wp.tobytes()}
  assert raw[3:] == [records[1].num_boxes, 480, 640, "img1", records[1].caption]
  # With msgpack_numpy's hook, the official `BertPreprocessBatch.__call__` unpacking.
  for key, record in zip(keys, records, strict=True):
    data = msgpack_numpy.unpackb(stored[key], **wire.UNPACK_OPTIONS)
    (image_feature_wp, image_target_wp, image_location_wp, num_boxes, image_h, image_w,
     image_id, caption) = data
    np.testing.assert_array_equal(image_feature_wp, record.image_feature_wp)
    np.testing.assert_array_equal(image_target_wp, record.image_target_wp)
    np.testing.assert_array_equal(image_location_wp, record.image_location_wp)
    assert (int(num_boxes), image_h, image_w, image_id, caption) == (
        record.num_boxes, 480, 640, record.image_id, record.caption)
  with open(caption_path) as handle:
    assert list(json.load(handle).values()) == [record.caption for record in records]


def test_reader_reads_the_writer_and_tensorpack_layouts(tmp_path):
  records = make_records(4)
  write_concap_lmdb(tmp_path / "ours.lmdb", records)
  reader = ConcapLMDB(tmp_path / "ours.lmdb")
  assert len(reader) == 4 and reader.key(2) == b"00000002"
  for read, written in zip(reader, records, strict=True):
    assert_same_record(read, written)
  with pytest.raises(FileExistsError):
    write_concap_lmdb(tmp_path / "ours.lmdb", records)

  # An LMDB folder written with msgpack_numpy itself, numpy scalars and float64 boxes, and no
  # `__keys__` (record order is then the database's key order).
  folder = tmp_path / "folder.lmdb"
  folder.mkdir()
  environment = lmdb.open(os.fspath(folder), map_size=1 << 26)
  with environment.begin(write=True) as txn:
    for index, record in enumerate(records):
      datapoint = record.to_datapoint()
      datapoint[2] = datapoint[2].astype(np.float64)
      datapoint[3:6] = [np.int64(value) for value in datapoint[3:6]]
      txn.put(record_key(index), msgpack_numpy.packb(datapoint, use_bin_type=True))
  environment.close()
  reader = ConcapLMDB(folder)
  assert len(reader) == 4
  for read, written in zip(reader, records, strict=True):
    assert_same_record(read, written)
    assert read.image_location_wp.dtype == np.float64 and type(read.num_boxes) is int


def _rewrite(path: Path, key: bytes, value: bytes) -> None:
  environment = lmdb.open(os.fspath(path), subdir=False, map_size=1 << 26)
  with environment.begin(write=True) as txn:
    txn.put(key, value)
  environment.close()


def _datapoint(**changes):
  datapoint = make_record(np.random.default_rng(3), 0, 3).to_datapoint()
  for field, value in changes.items():
    datapoint[FIELDS.index(field)] = value
  return datapoint


@pytest.mark.parametrize("value, message", [
    (b"\xc1garbage", "not a msgpack value"),
    (wire.dumps(_datapoint()[:7]), "is 7 fields"),
    (wire.dumps(_datapoint(image_feature_wp=[1.0, 2.0])), "image_feature_wp is a list"),
    (wire.dumps(_datapoint(num_boxes=4)), "num_boxes is 4"),
    (wire.dumps(_datapoint(image_location_wp=np.array([[0, 0, 9, 9], [5, 5, 1, 9],
                                                        [0, 0, 1, 1]], np.float32))),
     "box 1 of image_location_wp is [5.0, 5.0, 1.0, 9.0]"),
    (wire.dumps(_datapoint(image_w=0)), "image size {'image_w': 0}"),
    (wire.dumps(_datapoint(caption=7)), "caption is a int"),
    (msgpack.packb([{b"nd": True, b"type": "<f4", b"shape": [3, 8], b"data": b"\0" * 5}],
                   use_bin_type=True), "holds 5 bytes, not 96"),
])
def test_malformed_records_are_named(tmp_path, value, message):
  path = tmp_path / "corpus.lmdb"
  write_concap_lmdb(path, make_records(2))
  _rewrite(path, b"00000001", value)
  reader = ConcapLMDB(path)
  reader[0]
  with pytest.raises(DataError) as error:
    reader[1]
  text = str(error.value)
  assert text.startswith(f"{path}: record 00000001: ") and message in text, text
  assert "\n" not in text


def test_malformed_files_are_named(tmp_path):
  path = tmp_path / "corpus.lmdb"
  write_concap_lmdb(path, make_records(2))
  _rewrite(path, b"__keys__", wire.dumps([b"00000000"]))
  with pytest.raises(DataError, match=r"corpus.lmdb: key b'__keys__': lists 1 keys but the "
                     r"database holds 2 records"):
    ConcapLMDB(path)
  with pytest.raises(DataError, match=r"missing.lmdb: LMDB: does not exist"):
    ConcapLMDB(tmp_path / "missing.lmdb")
  captions = tmp_path / "caption_train.json"
  captions.write_text('{"img0": "a dog", "img1": ["not", "text"]}')
  with pytest.raises(DataError, match=r"caption_train.json: image id 'img1': caption is"):
    read_captions(captions)
  captions.write_text('{"img0": "a dog",')
  with pytest.raises(DataError, match=r"caption_train.json: caption file: is not JSON"):
    read_captions(captions)


# ---------------------------------------------------------------------------------------------
# The official example construction.


def test_box_processing_follows_the_official_formulas():
  boxes = np.array([[0, 0, 99, 99], [10, 20, 109, 219], [600, 400, 639, 479]], np.float32)
  location = region_geometry.normalized_locations(boxes, image_w=640, image_h=480)
  area = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0]) / np.float32(640 * 480)
  expected = np.stack([boxes[:, 0] / 640, boxes[:, 1] / 480, boxes[:, 2] / 640,
                       boxes[:, 3] / 480, area], 1).astype(np.float32)
  np.testing.assert_array_equal(location, expected)
  assert location.dtype == np.float32
  iou = region_geometry.iou_matrix(boxes)
  # "+1 pixel": box 0 is 100x100, box 1 100x200; they share 90x80 pixels.
  assert iou[0, 1] == pytest.approx(90 * 80 / (100 * 100 + 100 * 200 - 90 * 80), rel=1e-6)
  assert iou[0, 2] == 0 and np.allclose(np.diag(iou), 1) and np.allclose(iou, iou.T)


# box 0: 100x100. box 1 overlaps it with IoU 0.68, box 2 with IoU exactly 0.4 (40x100 inside
# it), box 3 with 0.33, box 4 not at all.
HAND_BOXES = np.array([[0, 0, 99, 99], [10, 10, 109, 109], [0, 0, 39, 99],
                       [50, 0, 149, 99], [300, 300, 349, 349]], np.float32)


class FixedDraws:
  """A generator stand-in whose `random(n)` returns given values (in order of calls)."""

  def __init__(self, *draws):
    self._draws = [np.asarray(draw, float) for draw in draws]

  def random(self, size=None):
    return self._draws.pop(0)

  def integers(self, low, high, size=None, dtype=np.int64):
    return np.zeros(size, dtype) if size is not None else 0


def test_overlap_flags_on_a_hand_layout():
  flags = region_geometry.overlap_flags(HAND_BOXES)
  assert flags[0].tolist() == [True, True, False, False, False]   # 0.4 itself is not > 0.4
  masks = masking.mask_regions(flags, FixedDraws([0.01, 0.5, 0.5, 0.5, 0.5]))
  assert masks.selected.tolist() == [True, False, False, False, False]
  assert masks.zeroed.tolist() == [True, False, False, False, False]
  assert masks.flagged.tolist() == [True, True, False, False, False]
  # 0.14 / 0.15 > 0.9: selected and flagged, but the feature is kept; box 4 alone flags itself.
  masks = masking.mask_regions(flags, FixedDraws([0.14, 0.5, 0.5, 0.5, 0.05]))
  assert masks.selected.tolist() == [True, False, False, False, True]
  assert masks.zeroed.tolist() == [False, False, False, False, True]
  assert masks.flagged.tolist() == [True, True, False, False, True]


def _prepared_record(record: CaptionedImage, caption_ids) -> dict:
  return {"caption_ids": np.asarray(caption_ids, np.int32),
          "image_feat": record.image_feature_wp.astype(np.float16),
          "image_target": record.image_target_wp.astype(np.float16),
          "image_loc": region_geometry.normalized_locations(record.image_location_wp, record.image_w,
                                                    record.image_h),
          "overlap": region_geometry.overlap_flags(record.image_location_wp).astype(np.uint8).ravel()}


def test_example_layout_and_global_region():
  record = make_record(np.random.default_rng(4), 0, 5)
  record = CaptionedImage(record.image_feature_wp, record.image_target_wp, HAND_BOXES, 5, 480,
                          640, "img0", "unused")
  layout = PretrainingLayout(max_seq_length=SEQ_LEN, max_boxes=7, feature_dim=FEATURES,
                             num_classes=CLASSES)
  stored = _prepared_record(record, [2000, 2001, 2002])
  # alignment (aligned, caption 0), tokens (token 1 -> [MASK]), regions (box 0 selected, zeroed)
  draws = FixedDraws(0.2, [0.5, 0.01, 0.5], [0.01, 0.5, 0.5, 0.5, 0.5])
  example = masking.build_pretraining_example(stored, layout, draws, None, 1)
  assert list(example) == list(BATCH_KEYS)
  assert example["input_ids"].tolist() == [101, 2000, 103, 2002, 102] + [0] * 7
  assert example["masked_lm_labels"].tolist() == [-1, -1, 2001, -1, -1] + [-1] * 7
  assert example["attention_mask"].tolist() == [1] * 5 + [0] * 7
  assert example["token_type_ids"].tolist() == [0] * 12
  features = stored["image_feat"].astype(np.float32)
  np.testing.assert_array_equal(example["image_feat"][1], 0)
  np.testing.assert_array_equal(example["image_feat"][2:6], features[1:])
  np.testing.assert_array_equal(example["image_feat"][6:], 0)
  # The sum keeps box 1 (flagged, not zeroed); the divisor leaves boxes 0 and 1 out: 5 - 2.
  np.testing.assert_array_equal(example["image_feat"][0],
                                (features[1:].sum(0) / np.float64(3)).astype(np.float32))
  np.testing.assert_array_equal(example["image_loc"][0], [0, 0, 1, 1, 1])
  np.testing.assert_array_equal(example["image_loc"][1:6], stored["image_loc"])
  assert example["image_mask"].tolist() == [1] * 6 + [0] * 2
  assert example["image_label"].tolist() == [1, -1, -1, -1, -1, -1, -1]
  np.testing.assert_array_equal(example["image_target_kl"][:5],
                                stored["image_target"].astype(np.float32))
  np.testing.assert_array_equal(example["image_target_kl"][5:], 0)
  assert example["next_sentence_label"] == 0
  # misaligned: the drawn caption replaces the image's, label 1, still masked.
  draws = FixedDraws(0.7, [0.5] * 4, [0.5] * 5)
  example = masking.build_pretraining_example(stored, layout, draws,
                                              lambda index: [7, 8, 9, 10], 1)
  assert example["next_sentence_label"] == 1
  assert example["input_ids"].tolist()[:6] == [101, 7, 8, 9, 10, 102]


def test_example_keys_match_the_official_pretraining_inputs(pretrain_fixture_dir):
  path = pretrain_fixture_dir / "pretrain_inputs.npz"
  with np.load(path) as official:
    assert set(official.files) == set(BATCH_KEYS)
    shapes = {key: official[key].shape[1:] for key in official.files}
  seq_len, regions_ = shapes["input_ids"][0], shapes["image_feat"][0]
  layout = PretrainingLayout(max_seq_length=seq_len, max_boxes=regions_ - 1,
                             feature_dim=shapes["image_feat"][1],
                             num_classes=shapes["image_target_kl"][1])
  record = make_record(np.random.default_rng(5), 0, regions_ - 1)
  record = CaptionedImage(np.zeros((regions_ - 1, layout.feature_dim), np.float32),
                          np.zeros((regions_ - 1, layout.num_classes), np.float32),
                          record.image_location_wp, regions_ - 1, 480, 640, "x", "y")
  example = masking.build_pretraining_example(_prepared_record(record, [2000]), layout,
                                              np.random.default_rng(0), None, 0)
  assert {key: np.shape(value) for key, value in example.items()} == shapes


def _bounds(successes: int, trials: int, probability: float) -> bool:
  sigma = math.sqrt(trials * probability * (1 - probability))
  return abs(successes - trials * probability) <= 5 * sigma


def test_token_masking_statistics():
  rng = np.random.default_rng(11)
  tokens = rng.integers(1000, 30000, 200_000).astype(np.int32)
  masked, labels = masking.mask_tokens(tokens, rng, vocab_size=30522, mask_id=103)
  selected = labels >= 0
  np.testing.assert_array_equal(labels[selected], tokens[selected])
  np.testing.assert_array_equal(masked[~selected], tokens[~selected])
  assert _bounds(selected.sum(), tokens.size, 0.15)
  chosen = selected.sum()
  as_mask = (masked[selected] == 103).sum()
  kept = (masked[selected] == tokens[selected]).sum()
  randomized = masked[selected][(masked[selected] != 103) & (masked[selected] != tokens[selected])]
  assert _bounds(as_mask, chosen, 0.8) and _bounds(kept, chosen, 0.1)
  assert _bounds(randomized.size, chosen, 0.1)
  # Random tokens come from the whole vocabulary (special tokens and ids below 1000 included).
  assert randomized.min() >= 0 and randomized.max() < 30522 and (randomized < 1000).any()


def test_region_masking_and_alignment_statistics():
  rng = np.random.default_rng(12)
  regions_ = 100_000
  selected = zeroed = 0
  for _ in range(1000):
    masks = masking.mask_regions(np.eye(100, dtype=bool), rng)
    selected += masks.selected.sum()
    zeroed += masks.zeroed.sum()
    assert (masks.flagged == masks.selected).all()        # no overlaps but each box itself
  assert _bounds(selected, regions_, 0.15) and _bounds(zeroed, selected, 0.9)
  draws = [masking.draw_alignment(rng, 50) for _ in range(20_000)]
  negatives = [draw for draw in draws if draw is not None]
  assert _bounds(len(negatives), len(draws), 0.5)
  assert min(negatives) == 0 and max(negatives) == 49
  assert all(masking.draw_alignment(rng, 50, draw_negatives=False) is None for _ in range(200))


# ---------------------------------------------------------------------------------------------
# prepare -> grain.


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("concap")
  release = root / "conceptual_caption"
  train_records = make_records(10, seed=20)
  write_split(release, "train", train_records)
  # A caption pool larger than the LMDB, as a caption file may be.
  write_split(release, "val", make_records(5, seed=21),
              captions={f"extra{index}": " ".join(WORDS[index:index + 4]) for index in range(8)})
  data_dir = root / "prepared"
  summary = prepare_corpus(root, data_dir, max_seq_length=SEQ_LEN, max_boxes=MAX_BOXES, **quiet)
  assert not summary.up_to_date
  return root, data_dir, train_records


def test_prepare_writes_the_corpus_and_is_idempotent(prepared):
  root, data_dir, records = prepared
  corpus = open_corpus(data_dir)
  assert corpus.splits == ["train", "val"]
  assert corpus.split_info("train")["examples"] == 10
  assert corpus.split_info("val")["captions"] == 8
  assert corpus.layout == PretrainingLayout(SEQ_LEN, MAX_BOXES, FEATURES, CLASSES, 30522, 103,
                                            101, 102)
  lookup = CorpusLookup(corpus, "train")
  stored = lookup.record(3)
  np.testing.assert_array_equal(stored["image_feat"], records[3].image_feature_wp.astype(
      np.float16))
  assert stored["overlap"].reshape(records[3].num_boxes, -1).diagonal().all()
  assert stored["image_id"] == b"img3"
  assert len(stored["caption_ids"]) <= SEQ_LEN - 2
  # Unchanged inputs and settings: nothing to do.
  assert prepare_corpus(root, data_dir, max_seq_length=SEQ_LEN, max_boxes=MAX_BOXES,
                        **quiet).up_to_date


def test_prepare_by_the_corpus_name_uses_the_official_shapes(prepared, tmp_path):
  root, _, _ = prepared
  first = prepare(CORPUS_NAME, root, tmp_path, splits=["val"], **quiet)
  assert not first.up_to_date and first.splits["val"]["examples"] == 5
  layout = open_corpus(tmp_path).layout
  assert (layout.max_seq_length, layout.max_boxes) == (36, 36)
  assert prepare(CORPUS_NAME, root, tmp_path, splits=["val"], **quiet).up_to_date


def test_prepare_names_a_record_with_too_many_regions(tmp_path):
  write_split(tmp_path, "train", make_records(2) + [make_record(np.random.default_rng(0), 2,
                                                                MAX_BOXES + 1)])
  with pytest.raises(DataError, match=r"training_feat_all.lmdb: record 2 \(image 'img2'\): "
                     r"has 6 regions; expected at most 5"):
    prepare_corpus(tmp_path, tmp_path / "out", max_boxes=MAX_BOXES, **quiet)
  assert not (tmp_path / "out" / CORPUS_NAME).exists()


def test_batches_are_the_examples_of_their_seeded_masks(prepared):
  _, data_dir, _ = prepared
  batches = pretraining_batches(data_dir, "train", seed=3, batch_size_per_process=4)
  batch = batches[0]
  assert set(batch) == set(BATCH_KEYS)
  assert batch["image_feat"].shape == (4, MAX_BOXES + 1, FEATURES)
  assert batch["image_target_kl"].shape == (4, MAX_BOXES, CLASSES)
  assert batch["next_sentence_label"].shape == (4,)
  corpus = open_corpus(data_dir)
  lookup = CorpusLookup(corpus, "train")
  order = [int(index) for index in grain.MapDataset.range(10).shuffle(seed=3)[:4]]
  for row, index in enumerate(order):
    example = masking.build_pretraining_example(
        lookup.record(index), corpus.layout, masking_rng(3, 0, index), lookup.caption, 10)
    for key in BATCH_KEYS:
      np.testing.assert_array_equal(batch[key][row], example[key], err_msg=key)
  # Epoch 1 reads every record again and masks it afresh.
  epochs = pretraining_batches(data_dir, "train", seed=3, batch_size_per_process=10)

  def by_record(batch):   # a record's region locations are never masked: they identify it
    return {batch["image_loc"][row].tobytes(): (batch["masked_lm_labels"][row].tobytes(),
                                                batch["image_label"][row].tobytes())
            for row in range(10)}

  first, second = by_record(epochs[0]), by_record(epochs[1])
  assert first.keys() == second.keys() and len(first) == 10
  assert sum(first[record] != second[record] for record in first) >= 5


def test_masks_resume_and_do_not_depend_on_processes(prepared):
  _, data_dir, _ = prepared
  iterator = pretraining_iterator(data_dir, "train", seed=5, batch_size_per_process=4)
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(2)]
  resumed = pretraining_iterator(data_dir, "train", seed=5, batch_size_per_process=4)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in BATCH_KEYS:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  whole = pretraining_batches(data_dir, "train", seed=5, batch_size_per_process=4)[4]
  halves = [pretraining_batches(data_dir, "train", seed=5, batch_size_per_process=2,
                                process_index=process, process_count=2)[4]
            for process in range(2)]
  for key in BATCH_KEYS:
    interleaved = np.stack([halves[row % 2][key][row // 2] for row in range(4)])
    np.testing.assert_array_equal(interleaved, whole[key], err_msg=key)


def test_evaluation_pass_pads_without_labels(prepared):
  _, data_dir, _ = prepared
  batches = pretraining_batches(data_dir, "val", seed=0, batch_size_per_process=4, train=False)
  assert len(batches) == 2
  last = batches[1]
  assert last["example_mask"].tolist() == [1, 0, 0, 0]
  assert (last["masked_lm_labels"][1:] == -1).all() and (last["image_label"][1:] == -1).all()
  assert last["next_sentence_label"][1:].tolist() == [-1, -1, -1]
  again = pretraining_batches(data_dir, "val", seed=0, batch_size_per_process=4, train=False)
  for key in BATCH_KEYS:
    np.testing.assert_array_equal(again[0][key], batches[0][key])


def test_prepare_and_read_on_a_bucket(prepared, gcs, tmp_path, monkeypatch):
  root, data_dir, _ = prepared
  monkeypatch.setenv(paths.CACHE_ENV, os.fspath(tmp_path / "cache"))
  bucket = gcs.create_bucket("concap-prepared")
  settings = {"max_seq_length": SEQ_LEN, "max_boxes": MAX_BOXES, **quiet}
  summary = prepare_corpus(root, f"{bucket}/tfds", splits=["train"], **settings)
  assert not summary.up_to_date and summary.uploaded_bytes > 0
  assert "tfds/conceptual_captions/prepared.json" in gcs.object_names("concap-prepared", "tfds/")
  assert prepare_corpus(root, f"{bucket}/tfds", splits=["train"], **settings).up_to_date
  remote = pretraining_batches(f"{bucket}/tfds", "train", seed=2, batch_size_per_process=4)[1]
  local = pretraining_batches(data_dir, "train", seed=2, batch_size_per_process=4)[1]
  for key in BATCH_KEYS:
    np.testing.assert_array_equal(remote[key], local[key], err_msg=key)
