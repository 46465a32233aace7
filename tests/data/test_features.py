"""Tests of the region-feature readers (LMDB, bottom-up TSV, npy/npz folder)."""

from __future__ import annotations

import base64
import copy
import csv
import os
import pickle
import subprocess
import sys

import lmdb
import numpy as np
import pytest

from twelve_in_one.data.errors import DataError
from twelve_in_one.data.features import (
    BottomUpTSV,
    FeatureLMDB,
    ImageFeatures,
    NpyFeatureFolder,
    build_image_features,
    close_feature_lmdb,
    pad_regions,
    write_feature_lmdb,
)

FEATURE_DIM = 2048
# Small map size keeps the sparse data.mdb modest in tmp_path.
MAP_SIZE = 1 << 28


def make_record(rng: np.random.Generator, image_id, num_boxes: int, width: int, height: int):
  """A release-format record with valid random boxes inside the image."""
  x1 = rng.uniform(0, width - 2, num_boxes)
  y1 = rng.uniform(0, height - 2, num_boxes)
  x2 = np.minimum(x1 + rng.uniform(1, width, num_boxes), width - 1)
  y2 = np.minimum(y1 + rng.uniform(1, height, num_boxes), height - 1)
  return {
      "image_id": image_id,
      "image_h": height,
      "image_w": width,
      "num_boxes": num_boxes,
      "boxes": np.stack([x1, y1, x2, y2], axis=1).astype(np.float32),
      "features": rng.standard_normal((num_boxes, FEATURE_DIM)).astype(np.float32) * 3,
  }


@pytest.fixture(scope="module")
def records():
  rng = np.random.default_rng(0)
  return [
      make_record(rng, 9, 5, 640, 480),
      make_record(rng, 42, 120, 500, 375),
      make_record(rng, 391895, 1, 333, 500),
      make_record(rng, "n161313", 7, 800, 600),
  ]


def write_tsv(path, records):
  with open(path, "w", newline="") as handle:
    writer = csv.writer(handle, delimiter="\t")
    for record in records:
      writer.writerow([
          record["image_id"], record["image_w"], record["image_h"], record["num_boxes"],
          base64.b64encode(record["boxes"].tobytes()).decode("ascii"),
          base64.b64encode(record["features"].tobytes()).decode("ascii"),
      ])


def extract_features_dict(record):
  """The dict script/extract_features.py saves per image."""
  num_boxes = record["num_boxes"]
  return {
      "bbox": record["boxes"],
      "num_boxes": num_boxes,
      "objects": np.zeros((num_boxes,), np.int64),
      "image_width": record["image_w"],
      "image_height": record["image_h"],
      "cls_prob": np.full((num_boxes, 1601), 1 / 1601, np.float32),
      "image_id": str(record["image_id"]),
      "features": record["features"],
  }


@pytest.fixture(scope="module")
def feature_files(tmp_path_factory, records):
  root = tmp_path_factory.mktemp("features")
  write_feature_lmdb(root / "features.lmdb", records, map_size=MAP_SIZE)
  write_tsv(root / "features.tsv", records)
  npy_dir = root / "npy"
  npy_dir.mkdir()
  for index, record in enumerate(records):
    item = extract_features_dict(record)
    if index % 2:
      np.savez(npy_dir / f"{record['image_id']}.npz", **item)
    else:
      np.save(npy_dir / f"{record['image_id']}.npy", item)
  return root


def official_transform(record):
  """A line-by-line numpy transcription of ImageFeaturesH5Reader.__getitem__."""
  image_h, image_w = int(record["image_h"]), int(record["image_w"])
  features = record["features"].reshape(-1, 2048)
  boxes = record["boxes"].reshape(-1, 4)
  num_boxes = features.shape[0]
  g_feat = np.sum(features, axis=0) / num_boxes
  num_boxes = num_boxes + 1
  features = np.concatenate([np.expand_dims(g_feat, axis=0), features], axis=0)
  image_location = np.zeros((boxes.shape[0], 5), dtype=np.float32)
  image_location[:, :4] = boxes
  image_location[:, 4] = ((image_location[:, 3] - image_location[:, 1])
                          * (image_location[:, 2] - image_location[:, 0])
                          / (float(image_w) * float(image_h)))
  image_location_ori = copy.deepcopy(image_location)
  image_location[:, 0] = image_location[:, 0] / float(image_w)
  image_location[:, 1] = image_location[:, 1] / float(image_h)
  image_location[:, 2] = image_location[:, 2] / float(image_w)
  image_location[:, 3] = image_location[:, 3] / float(image_h)
  g_location = np.array([0, 0, 1, 1, 1])
  image_location = np.concatenate([np.expand_dims(g_location, axis=0), image_location], axis=0)
  g_location_ori = np.array([0, 0, image_w, image_h, image_w * image_h])
  image_location_ori = np.concatenate(
      [np.expand_dims(g_location_ori, axis=0), image_location_ori], axis=0)
  return features, num_boxes, image_location, image_location_ori


def test_lmdb_matches_official_transform_exactly(feature_files, records):
  reader = FeatureLMDB(feature_files / "features.lmdb")
  for record in records:
    result = reader[record["image_id"]]
    features, num_boxes, location, location_ori = official_transform(record)
    assert isinstance(result, ImageFeatures)
    assert result.num_boxes == num_boxes == record["num_boxes"] + 1
    assert result.features.dtype == np.float32
    assert np.array_equal(result.features, features)
    # The official arrays are float64 after concatenating with int rows;
    # the values are float32 numbers, so the cast is exact.
    assert np.array_equal(result.boxes_norm5, location.astype(np.float32))
    assert np.array_equal(result.boxes_pixels5, location_ori.astype(np.float32))
    assert (result.image_h, result.image_w) == (record["image_h"], record["image_w"])


def test_transform_by_hand():
  features = np.array([[1.0, 2.0], [3.0, 6.0]], np.float32)
  boxes = np.array([[0, 0, 50, 20], [10, 30, 100, 80]], np.float32)
  result = build_image_features("7", features, boxes, 80, 100, source="hand",
                                feature_dim=2)
  assert result.features.tolist() == [[2.0, 4.0], [1.0, 2.0], [3.0, 6.0]]
  assert result.num_boxes == 3
  np.testing.assert_allclose(result.boxes_norm5, [
      [0, 0, 1, 1, 1],
      [0, 0, 0.5, 0.25, 50 * 20 / 8000],
      [0.1, 0.375, 1.0, 1.0, 90 * 50 / 8000],
  ], rtol=1e-6)
  np.testing.assert_allclose(result.boxes_pixels5, [
      [0, 0, 100, 80, 8000],
      [0, 0, 50, 20, 50 * 20 / 8000],
      [10, 30, 100, 80, 90 * 50 / 8000],
  ], rtol=1e-6)


def test_three_readers_give_identical_arrays(feature_files, records):
  readers = [FeatureLMDB(feature_files / "features.lmdb"),
             BottomUpTSV(feature_files / "features.tsv"),
             NpyFeatureFolder(feature_files / "npy")]
  for reader in readers:
    assert len(reader) == len(records)
    assert sorted(reader.keys()) == sorted(str(r["image_id"]) for r in records)
  for record in records:
    results = [reader[record["image_id"]] for reader in readers]
    for other in results[1:]:
      assert other.image_id == results[0].image_id == str(record["image_id"])
      assert other.num_boxes == results[0].num_boxes
      assert (other.image_h, other.image_w) == (results[0].image_h, results[0].image_w)
      for field in ("features", "boxes_norm5", "boxes_pixels5"):
        assert np.array_equal(getattr(other, field), getattr(results[0], field)), field


def test_lmdb_keys_in_file_order_and_lookup_forms(feature_files, records):
  reader = FeatureLMDB(feature_files / "features.lmdb")
  assert reader.keys() == [str(record["image_id"]) for record in records]
  by_int = reader[9]
  for form in ("9", b"9", np.int64(9)):
    assert np.array_equal(reader[form].features, by_int.features)
  assert 9 in reader and "9" in reader and np.int32(42) in reader
  assert 10 not in reader and 9.0 not in reader and None not in reader
  assert "n161313" in reader


def test_missing_image_id_names_file_id_and_neighbours(feature_files):
  path = feature_files / "features.lmdb"
  reader = FeatureLMDB(path)
  with pytest.raises(DataError) as error:
    reader[43]
  message = str(error.value)
  assert str(path) in message and "'43'" in message
  assert "nearby known ids" in message and "'42'" in message
  for other in (BottomUpTSV(feature_files / "features.tsv"),
                NpyFeatureFolder(feature_files / "npy")):
    with pytest.raises(DataError, match="image id '43'"):
      other[43]


def test_lmdb_without_keys_says_conversion_was_interrupted(tmp_path, records):
  path = tmp_path / "truncated.lmdb"
  env = lmdb.open(str(path), map_size=MAP_SIZE)
  # What an interrupted convert_to_lmdb.py leaves: records but no b"keys".
  with env.begin(write=True) as txn:
    for record in records[:2]:
      txn.put(str(record["image_id"]).encode(), pickle.dumps(record))
  env.close()
  with pytest.raises(DataError) as error:
    FeatureLMDB(path)
  assert str(path) in str(error.value)
  assert "interrupted" in str(error.value) and "b'keys'" in str(error.value)


def test_lmdb_missing_file_and_missing_record(tmp_path, records):
  with pytest.raises(DataError, match="LMDB environment: cannot be opened"):
    FeatureLMDB(tmp_path / "nowhere.lmdb")
  with pytest.raises(DataError, match="file: does not exist"):
    BottomUpTSV(tmp_path / "nowhere.tsv")
  path = tmp_path / "holes.lmdb"
  write_feature_lmdb(path, records[:2], map_size=MAP_SIZE)
  env = lmdb.open(str(path), map_size=MAP_SIZE)
  with env.begin(write=True) as txn:
    txn.delete(b"42")
  env.close()
  reader = FeatureLMDB(path)
  assert len(reader) == 2 and reader[9].num_boxes == 6
  with pytest.raises(DataError, match="image id '42': listed in b'keys' but has no record"):
    reader[42]


def test_interrupted_write_leaves_no_keys(tmp_path, records):
  def failing_records():
    yield records[0]
    raise KeyboardInterrupt

  path = tmp_path / "interrupted.lmdb"
  with pytest.raises(KeyboardInterrupt):
    write_feature_lmdb(path, failing_records(), map_size=MAP_SIZE)
  with pytest.raises(DataError, match="interrupted"):
    FeatureLMDB(path)


def test_written_lmdb_has_release_layout(feature_files, records):
  # Readers share one environment per path; close it to open the file directly.
  close_feature_lmdb(feature_files / "features.lmdb")
  env = lmdb.open(str(feature_files / "features.lmdb"), readonly=True, lock=False)
  with env.begin() as txn:
    assert pickle.loads(txn.get(b"keys")) == [str(r["image_id"]).encode() for r in records]
    item = pickle.loads(txn.get(b"42"))
  env.close()
  assert list(item) == ["image_id", "image_h", "image_w", "num_boxes", "boxes", "features"]
  assert item["boxes"].dtype == np.float32 and item["boxes"].shape == (120, 4)
  assert item["features"].shape == (120, FEATURE_DIM) and item["num_boxes"] == 120


@pytest.mark.parametrize("bad_box, fragment", [
    ([10, 10, 700, 20], "box 1"),   # x2 beyond the 640-wide image
    ([100, 50, 30, 40], "box 1"),   # an [x, y, w, h] box read as xyxy: x2 < x1
    ([-5, 0, 10, 10], "box 1"),     # starts left of the image
])
def test_box_outside_image(tmp_path, records, bad_box, fragment):
  record = copy.deepcopy(records[0])
  record["boxes"][1] = bad_box
  path = tmp_path / "bad.lmdb"
  write_feature_lmdb(path, [record], map_size=MAP_SIZE)
  with pytest.raises(DataError) as error:
    FeatureLMDB(path)[9]
  message = str(error.value)
  assert str(path) in message and "image id '9'" in message and fragment in message
  assert "640x480" in message


def test_box_within_tolerance_is_accepted(records):
  record = copy.deepcopy(records[0])
  record["boxes"][0] = [0, 0, 640.5, 480.5]
  result = build_image_features("9", record["features"], record["boxes"], 480, 640,
                                source="mem")
  assert result.boxes_pixels5[1, 2] == np.float32(640.5)


def test_wrong_feature_width_and_shape_mismatch(tmp_path, records):
  record = copy.deepcopy(records[0])
  record["features"] = record["features"][:, :1024]
  path = tmp_path / "narrow.lmdb"
  write_feature_lmdb(path, [record], map_size=MAP_SIZE)
  with pytest.raises(DataError, match=r"\[num_boxes, 2048\]"):
    FeatureLMDB(path)[9]
  # The width is configurable.
  assert FeatureLMDB(path, feature_dim=1024)[9].features.shape == (6, 1024)
  with pytest.raises(DataError, match="4 boxes but 5 feature rows"):
    build_image_features("9", records[0]["features"], records[0]["boxes"][:4], 480, 640,
                         source="mem")
  with pytest.raises(DataError, match="no regions"):
    build_image_features("9", np.zeros((0, 2048)), np.zeros((0, 4)), 480, 640,
                         source="mem")


def test_pad_regions_pads_and_truncates(feature_files):
  reader = FeatureLMDB(feature_files / "features.lmdb")
  small = reader[9]        # 5 boxes + global = 6 regions
  features, spatials, image_mask = pad_regions(small, 101)
  assert features.shape == (101, FEATURE_DIM) and spatials.shape == (101, 5)
  assert image_mask.dtype == np.int32 and image_mask.tolist() == [1] * 6 + [0] * 95
  assert np.array_equal(features[:6], small.features) and not features[6:].any()
  assert np.array_equal(spatials[:6], small.boxes_norm5) and not spatials[6:].any()
  large = reader[42]       # 120 boxes + global = 121 regions, keep the first 101
  features, spatials, image_mask = pad_regions(large, 101)
  assert image_mask.sum() == 101
  assert np.array_equal(features, large.features[:101])
  assert np.array_equal(spatials, large.boxes_norm5[:101])


def test_lmdb_reader_survives_pickling_and_new_processes(feature_files, monkeypatch):
  reader = FeatureLMDB(feature_files / "features.lmdb")
  expected = reader[42].features
  clone = pickle.loads(pickle.dumps(reader))
  assert np.array_equal(clone[42].features, expected)
  # A second reader of the same file in the same process shares the environment.
  assert np.array_equal(FeatureLMDB(feature_files / "features.lmdb")[42].features, expected)
  # In a forked worker (a new pid) the inherited handle is replaced, not reused;
  # a real fork is avoided because the suite may share a process with JAX.
  monkeypatch.setattr(os, "getpid", lambda: -12345)
  assert np.array_equal(reader[42].features, expected)


def test_tsv_bad_rows(tmp_path, records):
  path = tmp_path / "bad.tsv"
  write_tsv(path, records[:1])
  with open(path, "a") as handle:
    handle.write("77\t640\t480\n")
  reader = BottomUpTSV(path)
  assert len(reader) == 2
  with pytest.raises(DataError, match=r"row 2 \(image id '77'\): has 3 fields"):
    reader[77]
  short = tmp_path / "short.tsv"
  record = dict(records[0], num_boxes=4)  # num_boxes disagrees with the buffers
  write_tsv(short, [record])
  with pytest.raises(DataError, match="num_boxes=4"):
    BottomUpTSV(short)[9]


def test_tsv_several_files_and_duplicates(tmp_path, records):
  write_tsv(tmp_path / "part0.tsv", records[:2])
  write_tsv(tmp_path / "part1.tsv", records[2:])
  reader = BottomUpTSV([tmp_path / "part0.tsv", tmp_path / "part1.tsv"])
  assert reader.keys() == [str(record["image_id"]) for record in records]
  assert reader[391895].num_boxes == 2
  write_tsv(tmp_path / "dup.tsv", records[:1])
  with pytest.raises(DataError, match="already appeared"):
    BottomUpTSV([tmp_path / "part0.tsv", tmp_path / "dup.tsv"])


def test_npy_folder_checks_stored_id_and_keys(tmp_path, records):
  item = extract_features_dict(records[0])
  item["image_id"] = "10"
  np.save(tmp_path / "9.npy", item)
  with pytest.raises(DataError, match="stores image_id '10'"):
    NpyFeatureFolder(tmp_path)[9]
  del item["features"]
  item["image_id"] = "11"
  np.save(tmp_path / "11.npy", item)
  with pytest.raises(DataError, match="lacks features"):
    NpyFeatureFolder(tmp_path)[11]
  with pytest.raises(DataError, match="does not exist"):
    NpyFeatureFolder(tmp_path / "nowhere")


def test_data_package_imports_no_jax_and_no_model_code():
  code = ("import sys; import twelve_in_one.data.features, twelve_in_one.data.tokenizer, "
          "twelve_in_one.data.annotations; print(sorted(m for m in sys.modules if "
          "m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'torch', 'tensorflow') "
          "or m.startswith('twelve_in_one.models')))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
  assert result.stdout.strip() == "[]"
