"""Prepared data on Cloud Storage, against a real Cloud Storage API (fake-gcs-server).

`prepare` builds locally and uploads with the manifest last; `open_prepared` mirrors a task
folder to this machine's cache (reused while the remote manifest is unchanged) and reads the
mirror. Checked here: the objects written, idempotence without an upload, bitwise equality
with a local prepare through the pipeline, an interrupted upload, a remote rebuild (also one
made behind this process's back), the one-line location errors and a vocabulary on a bucket.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from release_fixture import small_task, write_release  # noqa: E402

from twelve_in_one import paths  # noqa: E402
from twelve_in_one.data import pipeline, remote  # noqa: E402
from twelve_in_one.data.errors import DataError  # noqa: E402
from twelve_in_one.data.prepare import prepare  # noqa: E402
from twelve_in_one.data.tfds_format import MANIFEST, open_prepared  # noqa: E402
from twelve_in_one.data.tokenizer import Tokenizer, default_vocab_path, file_sha256  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
quiet = {"progress": False, "log": lambda line: None}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
  return write_release(tmp_path_factory.mktemp("release"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
  """This test's own machine cache (mirrors and remote builds)."""
  monkeypatch.setenv(paths.CACHE_ENV, os.fspath(tmp_path / "cache"))
  return tmp_path / "cache"


def _relative_files(root) -> list[str]:
  return [os.path.relpath(os.fspath(path), os.fspath(root)) for path in paths.files_under(root)]


def _batches(task, data_dir, split, train: bool) -> list[dict[str, np.ndarray]]:
  iterator = pipeline.task_iterator(task, data_dir, split, seed=7, batch_size_per_process=2,
                                    train=train, read_threads=0)
  return [next(iterator) for _ in range(4)] if train else list(iterator)


def _upload_behind_our_back(gcs, bucket: str, name: str, data: bytes) -> None:
  """Writes an object through the JSON API, as another machine would (not through gcsfs)."""
  request = urllib.request.Request(
      f"{gcs.url}/upload/storage/v1/b/{bucket}/o?uploadType=media&"
      f"name={urllib.parse.quote(name, safe='')}", data=data,
      headers={"Content-Type": "application/octet-stream"})
  with urllib.request.urlopen(request, timeout=10):
    pass


def test_prepare_uploads_the_local_layout_and_is_idempotent(gcs, release, cache, tmp_path,
                                                             monkeypatch):
  task = small_task("snli_ve")
  bucket = gcs.create_bucket("prepared-layout")
  summary = prepare(task, release, f"{bucket}/tfds", **quiet)
  assert not summary.up_to_date and summary.path == f"{bucket}/tfds/snli_ve"
  local = prepare(task, release, tmp_path / "local", **quiet)
  objects = gcs.object_names("prepared-layout", "tfds/")
  expected = sorted(f"tfds/snli_ve/{name}" for name in _relative_files(Path(local.path)))
  assert objects == expected
  assert "tfds/snli_ve/prepared.json" in objects
  assert "tfds/snli_ve/images/1.0.0/snli_ve-train.array_record-00000-of-00001" in objects
  assert "tfds/snli_ve/examples/1.0.0/snli_ve-dev.array_record-00000-of-00001" in objects
  sizes = sum(os.path.getsize(os.fspath(f)) for f in paths.files_under(Path(local.path)))
  assert summary.uploaded_bytes == sizes > 0 and "MB/s" in summary.format()
  # Built in the cache and deleted after the upload.
  assert list((cache / "prepare").iterdir()) == []

  def no_upload(*args, **kwargs):
    raise AssertionError("an up-to-date prepare must not upload")

  monkeypatch.setattr(paths, "copy_file", no_upload)
  lines = []
  again = prepare(task, release, f"{bucket}/tfds", progress=False, log=lines.append)
  assert again.up_to_date and "nothing to do" in lines[-1] and again.uploaded_bytes == 0
  assert again.splits == summary.splits


def test_read_back_is_bitwise_the_local_prepare(gcs, release, cache, tmp_path, monkeypatch,
                                                caplog):
  task = small_task("retrieval_coco")        # also has tables-<split>.npz
  bucket = gcs.create_bucket("prepared-read")
  data_dir = f"{bucket}/tfds"
  prepare(task, release, data_dir, splits=["train", "test"], **quiet)
  prepare(task, release, tmp_path / "local", splits=["train", "test"], **quiet)
  with caplog.at_level(logging.INFO):
    prepared = open_prepared(task, data_dir)
  mirror = paths.local_mirror_of(f"{data_dir}/retrieval_coco")
  assert os.fspath(prepared.path) == os.fspath(mirror) and os.fspath(
      prepared.location) == f"{data_dir}/retrieval_coco"
  assert _relative_files(mirror) == _relative_files(tmp_path / "local" / "retrieval_coco")
  copied = [r.getMessage() for r in caplog.records if r.getMessage().startswith("copied gs://")]
  assert len(copied) == 1 and " MB in " in copied[0]
  with pytest.raises(ValueError, match=f"not prepared in {data_dir}/retrieval_coco"):
    prepared.split_info("val")

  # From now on the mirror is reused: nothing may be copied.
  def no_copy(*args, **kwargs):
    raise AssertionError("an unchanged remote dataset must not be copied again")

  monkeypatch.setattr(paths, "copy_file", no_copy)
  for split, train in (("train", True), ("train", False), ("test", False)):
    remote_batches = _batches(task, data_dir, split, train)
    local_batches = _batches(task, tmp_path / "local", split, train)
    assert len(remote_batches) == len(local_batches) > 0
    for got, want in zip(remote_batches, local_batches, strict=True):
      assert got.keys() == want.keys()
      for key in want:
        assert got[key].dtype == want[key].dtype and got[key].tobytes() == want[key].tobytes()


def test_interrupted_upload_is_refused_and_rerun_completes(gcs, release, cache, monkeypatch):
  # Retrieval: its tables-<split>.npz sort after prepared.json, so an upload in name order
  # would send the manifest before the last file; it must go last.
  task = small_task("retrieval_flickr30k")
  bucket = gcs.create_bucket("prepared-interrupted")
  data_dir = f"{bucket}/tfds"
  first = prepare(task, release, data_dir, **quiet)
  open_prepared(task, data_dir)            # a mirror of the complete dataset exists
  total = len(gcs.object_names("prepared-interrupted", "tfds/"))
  real_copy = paths.copy_file
  copies = []

  def interrupted(source, target, *args, **kwargs):
    if len(copies) == total - 1:       # killed while sending the very last file
      raise KeyboardInterrupt
    copies.append(os.fspath(target))
    real_copy(source, target, *args, **kwargs)

  monkeypatch.setattr(paths, "copy_file", interrupted)
  with pytest.raises(KeyboardInterrupt):
    prepare(task, release, data_dir, overwrite=True, **quiet)
  objects = gcs.object_names("prepared-interrupted", "tfds/")
  assert len(objects) == total - 1 and f"tfds/retrieval_flickr30k/{MANIFEST}" not in objects
  assert any(name.endswith(".npz") for name in objects)
  assert list((cache / "prepare").iterdir()) == []
  # The old mirror is still on disk, but the bucket is what counts.
  with pytest.raises(DataError, match=f"{data_dir}/retrieval_flickr30k: task "
                     "retrieval_flickr30k: is not prepared"):
    open_prepared(task, data_dir)
  monkeypatch.setattr(paths, "copy_file", real_copy)
  rerun = prepare(task, release, data_dir, **quiet)
  assert not rerun.up_to_date and len(gcs.object_names("prepared-interrupted", "tfds/")) == total
  assert rerun.splits == first.splits
  assert pipeline.num_examples(task, data_dir, "train") == rerun.splits["train"]["examples"] > 0


def test_a_rebuilt_remote_dataset_refreshes_the_mirror(gcs, release, cache):
  task = small_task("snli_ve")
  bucket = gcs.create_bucket("prepared-rebuilt")
  data_dir = f"{bucket}/tfds"
  prepare(task, release, data_dir, splits=["train"], **quiet)
  mirror = Path(os.fspath(open_prepared(task, data_dir).path))
  assert any("train" in name for name in _relative_files(mirror))
  prepare(task, release, data_dir, splits=["dev"], **quiet)
  assert open_prepared(task, data_dir).splits == ["dev"]
  names = _relative_files(mirror)
  assert any("-dev." in name for name in names) and not any("-train." in name for name in names)
  # No copy in progress or replaced copy is left beside the mirror (only the hosts' lock).
  assert sorted(p.name for p in mirror.parent.iterdir()) == [".snli_ve.lock", "snli_ve"]
  # Another machine rewrites the manifest with more bytes: this process has the folder's
  # listing cached (gcsfs keeps it), yet must read the new manifest whole and copy again.
  manifest = (mirror / MANIFEST).read_bytes()
  changed = manifest.replace(b'"created"', b'"note": "rebuilt elsewhere", "created"')
  _upload_behind_our_back(gcs, "prepared-rebuilt", f"tfds/snli_ve/{MANIFEST}", changed)
  assert open_prepared(task, data_dir).manifest["note"] == "rebuilt elsewhere"
  assert (mirror / MANIFEST).read_bytes() == changed


def test_a_rebuild_during_the_copy_is_caught(gcs, release, cache, monkeypatch):
  task = small_task("snli_ve")
  bucket = gcs.create_bucket("prepared-racing")
  data_dir = f"{bucket}/tfds"
  prepare(task, release, data_dir, splits=["dev"], **quiet)
  manifest = paths.as_path(f"{data_dir}/snli_ve/{MANIFEST}").read_bytes()
  newer = manifest.replace(b'"created"', b'"note": "newer", "created"')
  real_copy = paths.copy_file

  def racing(source, target, *args, **kwargs):
    # Another machine finishes a rebuild after this process read the manifest.
    _upload_behind_our_back(gcs, "prepared-racing", f"tfds/snli_ve/{MANIFEST}", newer)
    real_copy(source, target, *args, **kwargs)

  monkeypatch.setattr(paths, "copy_file", racing)
  with pytest.raises(DataError, match="changed while it was being copied"):
    open_prepared(task, data_dir)
  mirror = paths.local_mirror_of(f"{data_dir}/snli_ve")
  assert sorted(p.name for p in mirror.parent.iterdir()) == [".snli_ve.lock"]
  monkeypatch.setattr(paths, "copy_file", real_copy)
  assert open_prepared(task, data_dir).manifest["note"] == "newer"


def test_the_mirror_keeps_a_copy_another_process_installed(tmp_path):
  local, incoming = tmp_path / "vqa", tmp_path / ".vqa.incoming-1-a"
  for folder, marker in ((local, "theirs"), (incoming, "ours")):
    folder.mkdir()
    (folder / MANIFEST).write_text("same")
    (folder / "marker").write_text(marker)
  remote.install(incoming, local, MANIFEST)           # the same dataset: theirs stays
  assert (local / "marker").read_text() == "theirs"
  (incoming / MANIFEST).write_text("newer")
  remote.install(incoming, local, MANIFEST)           # a newer dataset replaces the old copy
  assert (local / "marker").read_text() == "ours" and not incoming.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["vqa"]


def test_location_errors_are_one_line(gcs, release, cache):
  task = small_task("snli_ve")
  with pytest.raises(paths.LocationError) as error:
    open_prepared(task, "gs://no-such-bucket-here/tfds")
  assert "gs://no-such-bucket-here" in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(paths.LocationError, match="bucket gs://no-such-bucket-here does not"):
    prepare(task, release, "gs://no-such-bucket-here/tfds", **quiet)
  assert not (cache / "prepare").exists()       # refused before building anything
  bucket = gcs.create_bucket("prepared-empty")
  with pytest.raises(DataError, match=f"{bucket}/tfds/snli_ve: task snli_ve: is not prepared"):
    open_prepared(task, f"{bucket}/tfds")
  with pytest.raises(paths.LocationError) as error:
    prepare(task, f"{bucket}/release", f"{bucket}/tfds", **quiet)
  assert "local disk or a gcsfuse mount" in str(error.value) and "\n" not in str(error.value)


def test_vocabulary_on_a_bucket(gcs):
  bucket = gcs.create_bucket("prepared-vocab")
  vocab = paths.as_path(f"{bucket}/bert/vocab.txt")
  vocab.write_bytes(default_vocab_path().read_bytes())
  assert file_sha256(vocab) == file_sha256(default_vocab_path())
  tokenizer, local = Tokenizer(os.fspath(vocab)), Tokenizer()
  assert tokenizer.vocab_size == local.vocab_size == 30522
  text = "Is the man's umbrella léft of the 2 red buses?"
  assert tokenizer.tokenize(text) == local.tokenize(text)
  for got, want in zip(tokenizer.encode(text, 16), local.encode(text, 16), strict=True):
    np.testing.assert_array_equal(got, want)
  clone = pickle.loads(pickle.dumps(tokenizer))
  assert os.fspath(clone.vocab_path) == os.fspath(vocab)
  np.testing.assert_array_equal(clone.encode(text, 16)[0], local.encode(text, 16)[0])
  with pytest.raises(FileNotFoundError, match=f"{bucket}/bert/missing.txt"):
    Tokenizer(f"{bucket}/bert/missing.txt")


def test_prepare_command_reports_a_missing_bucket_in_one_line(gcs, release, cache):
  command = [sys.executable, "-m", "twelve_in_one.cli", "prepare", "--task=snli_ve",
             f"--release_dir={release}", "--data_dir=gs://no-such-bucket-here/tfds",
             "--noprogress"]
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines() == [
      "twelve-in-one prepare: error: data_dir gs://no-such-bucket-here/tfds: bucket "
      "gs://no-such-bucket-here does not exist or this machine's credentials cannot see it; "
      "create it (`gcloud storage buckets create gs://no-such-bucket-here`) or fix the path"]
