"""Faults in data and inputs, each with its expected outcome; no case may pass silently.

| case                                            | expected outcome                              |
|-------------------------------------------------|-----------------------------------------------|
| prepared shard truncated                        | open: DataError naming the shard; prepare:    |
|                                                 | one line naming it, then a bitwise rebuild    |
| prepared shard's bytes changed, same size       | prepare --verify_checksums rebuilds it        |
| manifest of format 1 (no file entries)          | open: "re-run prepare"; prepare rebuilds      |
| bucket mirror truncated / bucket object cut     | downloaded again / prepare re-uploads         |
| NaN or inf target score                         | DataError: file, record and question id,      |
|                                                 | field 'scores'                                |
| empty question text                             | DataError: file, row, field 'question'        |
| repeated question id (pickle, json, JSON key)   | DataError: file, both rows, id field          |
| truncated feature LMDB                          | exit 1 and one line naming data.mdb, not      |
|                                                 | SIGBUS (exit 135)                             |
| hard-negative pool of float64 whole numbers     | prepared, identical to an int pool            |
| hard-negative pool with 2.5                     | DataError naming row and column               |
| box 2 px past the image edge (feature, ref box) | clipped and counted in summary and manifest   |
| the same with strict_boxes / --strict_boxes     | DataError naming file, image and box          |
| box 10 px past the edge                         | DataError naming file, image and box          |
| good data, strict or not                        | bitwise identical prepared files              |
| Python-2 pickle with UTF-8 "café"               | read as "café" (latin-1 only if not UTF-8)    |
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from release_fixture import HARD_POOL, small_task, write_release  # noqa: E402

from twelve_in_one import paths  # noqa: E402
from twelve_in_one.data.annotations.common import read_pickle  # noqa: E402
from twelve_in_one.data.annotations.genome import load_genome  # noqa: E402
from twelve_in_one.data.annotations.gqa import load_gqa  # noqa: E402
from twelve_in_one.data.annotations.retrieval import load_hard_negatives  # noqa: E402
from twelve_in_one.data.annotations.vqa import load_vqa  # noqa: E402
from twelve_in_one.data.errors import DataError  # noqa: E402
from twelve_in_one.data.examples import build_split, iou_plus_one  # noqa: E402
from twelve_in_one.data.features import FeatureLMDB, close_feature_lmdb  # noqa: E402
from twelve_in_one.data.prepare import prepare  # noqa: E402
from twelve_in_one.data.tfds_format import MANIFEST, open_prepared  # noqa: E402
from twelve_in_one.data.tokenizer import Tokenizer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
quiet = {"progress": False, "log": lambda line: None}
CLIPPED_REGIONS = "region boxes past the image edge (clipped to the image)"
CLIPPED_REFS = "annotated boxes past the image edge (clipped to the image)"


@pytest.fixture
def release(tmp_path) -> Path:
  """A fresh tiny release per test: the tests damage it."""
  return write_release(tmp_path / "release")


def _one_line_error(call, *fragments) -> str:
  with pytest.raises(DataError) as error:
    call()
  message = str(error.value)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, (fragment, message)
  return message


def _manifest(folder: Path) -> dict:
  return json.loads((folder / MANIFEST).read_text())


def _shard(folder: Path, config: str, split: str) -> Path:
  return next((folder / config / "1.0.0").glob(f"*-{split}.array_record-*"))


# --------------------------------------------------------------------------- prepared data


def test_truncated_shard_is_named_at_open_and_rebuilt_bitwise_by_prepare(release, tmp_path):
  task = small_task("snli_ve")
  data = tmp_path / "prepared"
  prepare(task, release, data, **quiet)
  folder = data / "snli_ve"
  files = _manifest(folder)["files"]
  on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name != MANIFEST)
  assert sorted(files) == on_disk
  for relative, entry in files.items():
    assert entry["bytes"] == (folder / relative).stat().st_size and len(entry["sha256"]) == 64
  counts = _manifest(folder)["splits"]
  for split in ("train", "dev", "test"):
    assert files[_shard(folder, "images", split).relative_to(folder).as_posix()][
        "records"] == counts[split]["images"]
  shard = _shard(folder, "images", "train")
  good = shard.read_bytes()
  shard.write_bytes(good[:len(good) // 2])
  _one_line_error(lambda: open_prepared(task, data), str(shard),
                  f"is {len(good) // 2} bytes but prepare wrote {len(good)}", "re-run prepare")
  lines: list[str] = []
  summary = prepare(task, release, data, progress=False, log=lines.append)
  assert not summary.up_to_date
  assert [line for line in lines if str(shard) in line and line.endswith("rebuilding")]
  assert shard.read_bytes() == good
  open_prepared(task, data)


def test_changed_bytes_are_caught_by_checksums_and_old_manifests_rebuilt(release, tmp_path):
  task = small_task("nlvr2")
  data = tmp_path / "prepared"
  prepare(task, release, data, **quiet)
  folder = data / "nlvr2"
  shard = _shard(folder, "examples", "train")
  good = shard.read_bytes()
  # Same size, same record count: only the checksum tells.
  damaged = bytearray(good)
  damaged[len(good) // 3] ^= 0xFF
  shard.write_bytes(bytes(damaged))
  assert prepare(task, release, data, **quiet).up_to_date
  lines: list[str] = []
  assert not prepare(task, release, data, verify_checksums=True, progress=False,
                     log=lines.append).up_to_date
  assert [line for line in lines if str(shard) in line and "SHA-256" in line]
  assert shard.read_bytes() == good
  # A manifest of format 1 has nothing to check the files against.
  manifest = _manifest(folder)
  manifest["format_version"] = 1
  del manifest["files"]
  (folder / MANIFEST).write_text(json.dumps(manifest))
  _one_line_error(lambda: open_prepared(task, data), "format_version: is 1", "re-run prepare")
  lines.clear()
  assert not prepare(task, release, data, progress=False, log=lines.append).up_to_date
  assert any("prepared in format 1" in line and "rebuilding" in line for line in lines)
  open_prepared(task, data)


def test_a_damaged_bucket_copy_or_mirror_is_replaced(gcs, release, tmp_path, monkeypatch,
                                                     caplog):
  monkeypatch.setenv(paths.CACHE_ENV, os.fspath(tmp_path / "cache"))
  task = small_task("snli_ve")
  bucket = gcs.create_bucket("faults-mirror")
  data_dir = f"{bucket}/tfds"
  prepare(task, release, data_dir, **quiet)
  mirror = Path(os.fspath(open_prepared(task, data_dir).path))
  shard = _shard(mirror, "images", "dev")
  good = shard.read_bytes()
  shard.write_bytes(good[:100])
  with caplog.at_level(logging.WARNING):
    assert Path(os.fspath(open_prepared(task, data_dir).path)) == mirror
  assert [r.getMessage() for r in caplog.records
          if str(shard) in r.getMessage() and "downloading the dataset again" in r.getMessage()]
  assert shard.read_bytes() == good
  # A cut object in the bucket: prepare sees the size and uploads again.
  remote = paths.as_path(f"{data_dir}/snli_ve") / shard.relative_to(mirror).as_posix()
  remote.write_bytes(good[:100])
  paths.forget_cached_listings(remote)
  lines: list[str] = []
  assert not prepare(task, release, data_dir, progress=False, log=lines.append).up_to_date
  assert [line for line in lines if os.fspath(remote) in line and "rebuilding" in line]
  paths.forget_cached_listings(remote)
  assert remote.read_bytes() == good


# --------------------------------------------------------------------------- bad values


def _rewrite_pickle(path: Path, change) -> None:
  path.write_bytes(pickle.dumps(change(pickle.loads(path.read_bytes()))))


def test_nan_target_score_fails_prepare_naming_file_record_and_field(release, tmp_path):
  targets = release / "datasets" / "VQA" / "cache" / "train_target.pkl"
  _rewrite_pickle(targets, lambda rows: [{**row, "scores": [math.nan, 0.3]}
                                         if row["question_id"] == 20 else row for row in rows])
  _one_line_error(lambda: prepare(small_task("vqa"), release, tmp_path / "p", splits=[
      "trainval"], **quiet), str(targets), "record 1 (question_id 20), field 'scores'", "nan")
  assert not (tmp_path / "p" / "vqa").exists()


def _vqa_questions(release: Path, change) -> Path:
  path = release / "datasets" / "VQA" / "v2_OpenEnded_mscoco_train2014_questions.json"
  data = json.loads(path.read_text())
  change(data["questions"])
  path.write_text(json.dumps(data))
  return path


def _gqa_targets(release: Path, change) -> Path:
  path = release / "datasets" / "gqa" / "cache" / "train_target.pkl"
  _rewrite_pickle(path, lambda rows: change(rows) or rows)
  return path


def _genome_targets(release: Path, change) -> Path:
  path = release / "datasets" / "visual_genome" / "cache" / "trainval_target.pkl"
  _rewrite_pickle(path, lambda rows: change(rows) or rows)
  return path


def _set(row: int, **fields):
  def change(rows):
    rows[row].update(fields)
  return change


@pytest.mark.parametrize("case", [
    ("vqa", _vqa_questions, _set(2, question="  "),
     ["questions[2] (question_id 30), field 'question'", "is empty"]),
    ("vqa", _vqa_questions, _set(1, question_id=10),
     ["questions[1] (question_id 10), field 'question_id'", "repeats", "questions[0]"]),
    ("gqa", _gqa_targets, _set(1, scores=[math.inf]),
     ["record 1 (question_id '6'), field 'scores'", "inf"]),
    ("gqa", _gqa_targets, _set(2, question=""), ["record 2", "field 'question'", "is empty"]),
    ("gqa", _gqa_targets, _set(2, question_id="05"),
     ["record 2 (question_id '05'), field 'question_id'", "repeats", "record 0"]),
    ("genome", _genome_targets, _set(7, question=None), ["record 7", "field 'question'"]),
    ("genome", _genome_targets, _set(9, question_id=3),
     ["record 9 (question_id 3), field 'question_id'", "repeats", "record 3"]),
    ("genome", _genome_targets, _set(4, scores=[float("nan")]),
     ["record 4 (question_id 4), field 'scores'", "nan"]),
], ids=lambda case: f"{case[0]}-{case[3][0]}")
def test_bad_questions_and_scores_name_file_row_and_field(release, case):
  reader, write, change, fragments = case
  path = write(release, change)
  root = release / "datasets"
  load = {"vqa": lambda: load_vqa(root / "VQA", "train"),
          "gqa": lambda: load_gqa(root / "gqa", "train"),
          "genome": lambda: load_genome(root / "visual_genome", "train")}[reader]
  _one_line_error(load, str(path), *fragments)


def test_repeated_gqa_testdev_ids(release):
  path = release / "datasets" / "gqa" / "testdev_balanced_questions.json"
  record = '{"imageId": "n161313", "question": "Is it left?"}'
  path.write_text(f'{{"201": {record}, "7": {record}, "201": {record}}}')
  _one_line_error(lambda: load_gqa(path.parent, "test"), str(path), "key '201'",
                  "appears twice")
  path.write_text(f'{{"07": {record}, "7": {record}}}')
  _one_line_error(lambda: load_gqa(path.parent, "test"), str(path),
                  "question '7', field 'question_id': repeats", "question '07'")


def test_truncated_feature_lmdb_is_one_line_not_a_bus_error(release, tmp_path):
  data_file = release / "datasets" / small_task("snli_ve").features / "data.mdb"
  content = data_file.read_bytes()
  data_file.write_bytes(content[:len(content) // 2])
  command = [sys.executable, "-m", "twelve_in_one.cli", "prepare", "--task=snli_ve",
             f"--release_dir={release}", f"--data_dir={tmp_path / 'p'}", "--noprogress"]
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
  assert str(data_file) in result.stderr and "truncated" in result.stderr
  line = next(line for line in result.stderr.splitlines() if str(data_file) in line)
  assert f"is {len(content) // 2} bytes" in line and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- release quirks


def _pool_pickle(release: Path, pool) -> Path:
  path = release / "datasets" / "cocoRetreival" / "hard_negative_cleaned.pkl"
  path.write_bytes(pickle.dumps({"train_image_list": [9, 25, 30], "train_hard_pool": pool}))
  return path


def test_float64_hard_negative_pools(release, tmp_path):
  task = small_task("retrieval_coco")
  prepare(task, release, tmp_path / "int", splits=["train"], **quiet)
  _pool_pickle(release, np.asarray(HARD_POOL, np.float64))
  prepare(task, release, tmp_path / "float", splits=["train"], **quiet)
  assert (_manifest(tmp_path / "int" / "retrieval_coco")["files"]
          == _manifest(tmp_path / "float" / "retrieval_coco")["files"])
  pool = np.asarray(HARD_POOL, np.float64)
  pool[1, 2] = 2.5
  path = _pool_pickle(release, pool)
  _one_line_error(lambda: load_hard_negatives(path), str(path),
                  "train_hard_pool row 1, column 2", "holds 2.5, not a whole number")
  pool[1, 2] = math.nan
  _one_line_error(lambda: load_hard_negatives(_pool_pickle(release, pool)), "row 1, column 2")


def _move_box(path: Path, image_id: bytes, box: int, coordinates) -> None:
  close_feature_lmdb(path)
  env = lmdb.open(str(path), map_size=1 << 26)
  with env.begin(write=True) as txn:
    item = pickle.loads(txn.get(image_id))
    item["boxes"][box] = coordinates
    txn.put(image_id, pickle.dumps(item))
  env.close()


def test_boxes_past_the_edge_are_clipped_counted_or_refused(release, tmp_path):
  task = small_task("snli_ve")
  good_default = prepare(task, release, tmp_path / "default", **quiet)
  prepare(task, release, tmp_path / "strict", strict_boxes=True, **quiet)
  # Good data: strict or not, the same bytes, nothing counted.
  assert (_manifest(tmp_path / "default" / "snli_ve")["files"]
          == _manifest(tmp_path / "strict" / "snli_ve")["files"])
  assert "clipped to the image" not in good_default.format()
  lmdb_path = release / "datasets" / task.features
  box = FeatureLMDB(lmdb_path)[1001].boxes_pixels5[2, :4].copy()   # row 0 is the global one
  _move_box(lmdb_path, b"1001", 1, [box[0], box[1], 502.0, box[3]])   # 500 px wide image
  summary = prepare(task, release, tmp_path / "clipped", **quiet)
  assert summary.splits["train"]["skipped"][CLIPPED_REGIONS] == 1
  assert summary.splits["test"]["skipped"][CLIPPED_REGIONS] == 1
  assert CLIPPED_REGIONS not in summary.splits["dev"]["skipped"]
  assert f"{CLIPPED_REGIONS}: 1" in summary.format()
  assert _manifest(tmp_path / "clipped" / "snli_ve")["splits"]["train"]["skipped"][
      CLIPPED_REGIONS] == 1
  image = FeatureLMDB(lmdb_path)[1001]
  assert image.boxes_pixels5[2, 2] == 500 and image.boxes_norm5[2, 2] == 1
  fragments = [str(lmdb_path), "image id '1001', box 1", "outside the 500x333 image"]
  _one_line_error(lambda: prepare(task, release, tmp_path / "s", strict_boxes=True, **quiet),
                  *fragments)
  command = [sys.executable, "-m", "twelve_in_one.cli", "prepare", "--task=snli_ve",
             f"--release_dir={release}", f"--data_dir={tmp_path / 'cli'}", "--noprogress",
             "--strict_boxes"]
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert result.returncode == 1 and all(f in result.stderr for f in fragments), result.stderr
  _move_box(lmdb_path, b"1001", 1, [box[0], box[1], 510.0, box[3]])   # far past: refused
  _one_line_error(lambda: prepare(task, release, tmp_path / "far", **quiet), *fragments)


def test_annotated_box_past_the_edge_is_clipped_before_its_iou(release, tmp_path):
  instances = release / "datasets" / "refcoco" / "refcoco" / "instances.json"
  content = json.loads(instances.read_text())
  annotation = next(a for a in content["annotations"] if a["id"] == 501)   # ref 101, val
  annotation["bbox"] = [600, 440, 42, 42]       # to (642, 482) on the 640x480 image 9
  instances.write_text(json.dumps(content))
  task = small_task("refcoco")
  summary = prepare(task, release, tmp_path / "p", splits=["val"], **quiet)
  assert summary.splits["val"]["skipped"] == {CLIPPED_REFS: 1}
  split = build_split(task, release, "val", tokenizer=Tokenizer())
  record = split.final_record(0, [split.image(0)])
  want = iou_plus_one(split.image(0).pixel_boxes, [600, 440, 640, 480])
  np.testing.assert_array_equal(record["target"][:len(want)], want)
  with pytest.raises(DataError, match=r"refs\(unc\)\.p: ref_id 101 sent_id 1010: box"):
    prepare(task, release, tmp_path / "s", splits=["val"], strict_boxes=True, **quiet)


def _py2_pickle(value, utf8: bool = True) -> bytes:
  """`value` pickled as Python 2's pickle.dumps(value, 2) writes it: every str a byte string."""
  out = bytearray(b"\x80\x02")

  def emit(item) -> None:
    if isinstance(item, str):
      raw = item.encode("utf-8" if utf8 else "latin-1")
      out.extend(b"U" + bytes([len(raw)]) + raw if len(raw) < 256
                 else b"T" + struct.pack("<i", len(raw)) + raw)
    elif isinstance(item, bool) or item is None:
      out.extend({True: b"\x88", False: b"\x89", None: b"N"}[item])
    elif isinstance(item, int):
      out.extend(b"J" + struct.pack("<i", item))
    elif isinstance(item, list):
      out.extend(b"](")
      for element in item:
        emit(element)
      out.extend(b"e")
    elif isinstance(item, dict):
      out.extend(b"}(")
      for key, element in item.items():
        emit(key)
        emit(element)
      out.extend(b"u")
    else:
      raise TypeError(type(item))

  emit(value)
  return bytes(out + b".")


def test_python2_pickles_decode_text_as_utf8(release, tmp_path):
  path = tmp_path / "py2.p"
  # Python 2 `unicode` (BINUNICODE) loads unchanged; byte strings are UTF-8, else latin-1.
  path.write_bytes(_py2_pickle({"caption": "café", "count": 3})[:-2]
                   + b"U\x05latin" + b"U\x04caf\xe9" + b"U\x07unicodeX\x06\x00\x00\x00na\xc3\xafveu.")
  assert read_pickle(path, "a dict") == {"caption": "café", "count": 3, "latin": "café",
                                         "unicode": "naïve"}
  # Through the RefCOCO reader and the tokenizer: "café", not "caf ##a ##©".
  refs = release / "datasets" / "refcoco" / "refcoco" / "refs(unc).p"
  rows = pickle.loads(refs.read_bytes())
  for ref in rows:
    for sentence in ref["sentences"]:
      sentence["raw"] = sentence["sent"] = "the café"
  refs.write_bytes(_py2_pickle(rows))
  tokenizer = Tokenizer()
  split = build_split(small_task("refcoco"), release, "val", tokenizer=tokenizer)
  ids, _, _ = tokenizer.encode_batch(["the café"], split.layout.seq_len)
  np.testing.assert_array_equal(split.records[0]["input_ids"], ids[0])
  assert tokenizer.tokenize("the café") == ["the", "cafe"]
