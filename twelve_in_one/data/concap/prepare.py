"""`prepare` for the Conceptual Captions corpus: release LMDB + caption file -> TFDS datasets.

    summary = prepare_corpus("/data/conceptual_caption", "/data/prepared")
    # or: twelve-in-one prepare --task conceptual_captions --release_dir ... --data_dir ...

Writes `<data_dir>/conceptual_captions/` (layout in `prepared.py`) with the guarantees of task
preparation (`data/prepare.py`): a fingerprint of the inputs and settings makes a second run
return at once (after checking every file's size and record count), everything is built in a
hidden sibling folder and renamed into place once its manifest is written (or uploaded with
the manifest last, for `gs://`), so an interrupted run never leaves a complete-looking corpus.

Malformed input stops the run with one line naming the file and the record (`release.py`);
the official loader would crash on the same records (a region count over `max_boxes`) or
silently feed them (non-finite features), so nothing is skipped.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tqdm

from twelve_in_one import paths
from twelve_in_one.data import remote
from twelve_in_one.data.concap.masking import PretrainingLayout
from twelve_in_one.data.concap.prepared import (
  CAPTIONS,
  CORPUS_FORMAT_VERSION,
  CORPUS_NAME,
  EXAMPLES,
  caption_features,
  example_features,
)
from twelve_in_one.data.concap.region_geometry import normalized_locations, overlap_flags
from twelve_in_one.data.concap.release import (
  SPLIT_FILES,
  CaptionedImage,
  ConcapLMDB,
  check_splits,
  corpus_dir,
  read_captions,
  split_files,
)
from twelve_in_one.data.errors import DataError
from twelve_in_one.data.integrity import describe_files
from twelve_in_one.data.prepare import PrepareSummary, _damage, _remove_stale
from twelve_in_one.data.tfds_format import (
  MANIFEST,
  TFDS_VERSION,
  write_metadata,
  write_split,
)
from twelve_in_one.data.tokenizer import Tokenizer, file_sha256, read_vocab

_CAPTION_CHUNK = 4096
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _inputs(folder: Path, splits: Sequence[str]) -> list[Path]:
  """The files a prepared corpus depends on: each split's LMDB (file or folder) and captions."""
  files: list[Path] = []
  for split in splits:
    for path in split_files(folder, split):
      files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.name != "lock.mdb")
                   if path.is_dir() else [path])
  return files


def fingerprint(folder: Path, splits: Sequence[str], layout_settings: dict[str, int],
                vocab_path: Any) -> str:
  """SHA-256 over the format version, settings, vocabulary and each input's size and mtime."""
  inputs = [[os.path.relpath(path, folder), path.stat().st_size, path.stat().st_mtime_ns]
            for path in _inputs(folder, splits)]
  payload = {"format_version": CORPUS_FORMAT_VERSION, "splits": list(splits),
             "layout": layout_settings, "vocab_sha256": file_sha256(vocab_path),
             "inputs": inputs}
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def caption_pieces(tokenizer: Tokenizer, texts: Sequence[str], max_seq_length: int
                   ) -> list[np.ndarray]:
  """Each text's word pieces cut to `max_seq_length - 2` (the official truncation), int32."""
  ids, mask, _ = tokenizer.encode_batch(texts, max_seq_length)
  lengths = mask.sum(axis=1)
  return [ids[row, 1:length - 1].copy() for row, length in enumerate(lengths)]


def stored_record(record: CaptionedImage, layout: PretrainingLayout, tokenizer: Tokenizer,
                  source: str, index: int) -> dict[str, Any]:
  """The prepared example record of one corpus record (see `prepared.py`).

  Raises:
    DataError: more regions than `layout.max_boxes`, other widths than the split's first
      record, or values beyond float16.
  """
  where = f"record {index} (image {record.image_id!r})"
  if record.num_boxes > layout.max_boxes:
    raise DataError.at(source, where, f"has {record.num_boxes} regions",
                       f"at most {layout.max_boxes} (max_boxes; the official loader holds 36)")
  widths = (record.image_feature_wp.shape[1], record.image_target_wp.shape[1])
  if widths != (layout.feature_dim, layout.num_classes):
    raise DataError.at(source, where, f"has {widths[0]} feature and {widths[1]} class "
                       "columns", f"{layout.feature_dim} and {layout.num_classes}, as the "
                       "split's first record")
  for field in ("image_feature_wp", "image_target_wp"):
    values = getattr(record, field)
    if not np.isfinite(values).all() or (values.size and np.abs(values).max() > _FLOAT16_MAX):
      raise DataError.at(source, where, f"{field} has values that are not finite or beyond "
                         "the float16 range (|x| > 65504)", "finite values that fit float16")
  return {
      "caption_ids": caption_pieces(tokenizer, [record.caption], layout.max_seq_length)[0],
      "image_feat": record.image_feature_wp.astype(np.float16),
      "image_target": record.image_target_wp.astype(np.float16),
      "image_loc": normalized_locations(record.image_location_wp, record.image_w,
                                        record.image_h),
      "overlap": overlap_flags(record.image_location_wp).astype(np.uint8).reshape(-1),
      "image_id": record.image_id,
  }


def _build(folder: Path, splits: list[str], tokenizer: Tokenizer, settings: dict[str, int],
           key: str, build_dir: Path, progress: bool, log: Callable[[str], None]
           ) -> dict[str, dict[str, Any]]:
  """Write every split's two datasets and, last, the manifest into `build_dir`."""
  vocab = read_vocab(tokenizer.vocab_path)
  layout: PretrainingLayout | None = None
  infos: dict[str, list[Any]] = {EXAMPLES: [], CAPTIONS: []}
  counts: dict[str, dict[str, Any]] = {}
  for split in splits:
    lmdb_path, caption_path = split_files(folder, split)
    corpus = ConcapLMDB(lmdb_path)
    if not len(corpus):
      raise DataError.at(lmdb_path, f"split {split}", "holds no record", "at least one")
    captions = read_captions(caption_path)
    if not captions:
      raise DataError.at(caption_path, f"split {split}", "holds no caption",
                         "the split's captions (the pool of random other captions)")
    if layout is None:
      first = corpus[0]
      layout = PretrainingLayout(
          **settings, feature_dim=first.image_feature_wp.shape[1],
          num_classes=first.image_target_wp.shape[1], vocab_size=tokenizer.vocab_size,
          mask_id=vocab["[MASK]"], cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id)
    log(f"{CORPUS_NAME}/{split}: {len(corpus)} records, {len(captions)} captions")

    def records(corpus: ConcapLMDB = corpus, split: str = split,
                layout: PretrainingLayout = layout) -> Iterator[dict[str, Any]]:
      for index in tqdm.tqdm(range(len(corpus)), desc=f"{CORPUS_NAME}/{split}", unit=" images",
                             disable=not progress, mininterval=1.0):
        yield stored_record(corpus[index], layout, tokenizer, corpus.path, index)

    def pool(captions: list[str] = captions,
             layout: PretrainingLayout = layout) -> Iterator[dict[str, Any]]:
      for start in range(0, len(captions), _CAPTION_CHUNK):
        for pieces in caption_pieces(tokenizer, captions[start:start + _CAPTION_CHUNK],
                                     layout.max_seq_length):
          yield {"caption_ids": pieces}

    region_bytes = 2 * (layout.feature_dim + layout.num_classes) + 20 + layout.max_boxes
    infos[EXAMPLES].append(write_split(
        build_dir / EXAMPLES / TFDS_VERSION, CORPUS_NAME, split, example_features(layout),
        records(), len(corpus), layout.max_boxes * region_bytes + 4 * layout.max_seq_length))
    infos[CAPTIONS].append(write_split(
        build_dir / CAPTIONS / TFDS_VERSION, CORPUS_NAME, split, caption_features(), pool(),
        len(captions), 4 * layout.max_seq_length + 16))
    counts[split] = {"examples": len(corpus), "images": len(corpus), "captions": len(captions),
                     "skipped": {}, "source": os.fspath(lmdb_path),
                     "caption_file": os.fspath(caption_path)}
  for config, features in ((EXAMPLES, example_features(layout)),
                           (CAPTIONS, caption_features())):
    write_metadata(build_dir / config / TFDS_VERSION, CORPUS_NAME, config, features,
                   infos[config], f"twelve_in_one prepared {CORPUS_NAME} ({config})")
  manifest = {
      "format_version": CORPUS_FORMAT_VERSION, "fingerprint": key,
      "layout": dataclasses.asdict(layout), "splits": counts,
      "vocab": os.fspath(tokenizer.vocab_path),
      "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "files": describe_files(build_dir, exclude=(MANIFEST,)),
  }
  (build_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
  return counts


def prepare_corpus(release_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str], *,
                   splits: Sequence[str] | None = None, vocab_path: str | None = None,
                   max_seq_length: int = 36, max_boxes: int = 36, overwrite: bool = False,
                   progress: bool = True, verify_checksums: bool = False,
                   log: Callable[[str], None] = print) -> PrepareSummary:
  """Prepare the corpus' TFDS datasets under `<data_dir>/conceptual_captions`.

  Args:
    release_dir: the corpus folder (`train_concap.py --file_path`), or a folder holding it as
      `conceptual_caption/` or `datasets/conceptual_caption/`.
    data_dir: where prepared datasets live: a local folder or a `gs://` URL.
    splits: "train" and/or "val" (default: each whose files are in the corpus folder).
    vocab_path: a bert-base-uncased style `vocab.txt` (default: the checked built-in one).
    max_seq_length: tokens per example, [CLS] and [SEP] included (official default 36).
    max_boxes: detector regions per example (the official loader's 36); R = max_boxes + 1.
    overwrite: rebuild even if an up-to-date corpus exists.
    progress: show tqdm progress bars.
    verify_checksums: before answering "already prepared", also compare every SHA-256.
    log: where to print status lines.

  Raises:
    DataError: a missing or malformed input, naming the file and the record.
    paths.LocationError: `data_dir`'s bucket is missing, or `release_dir` is on a bucket.
  """
  if paths.is_remote(release_dir):
    raise paths.LocationError(f"release_dir {os.fspath(release_dir)}: the corpus LMDB is "
                              "memory-mapped; it must be on a local disk or a gcsfuse mount")
  if max_seq_length < 2 or max_boxes < 1:
    raise ValueError(f"max_seq_length {max_seq_length} and max_boxes {max_boxes}: expected at "
                     "least 2 ([CLS] and [SEP]) and 1")
  folder = corpus_dir(release_dir)
  if splits:
    splits = check_splits(splits)
  else:
    splits = [split for split, (name, _) in SPLIT_FILES.items() if (folder / name).exists()]
    if not splits:
      raise DataError.at(folder, "corpus folder", "holds no split", " or ".join(
          name for name, _ in SPLIT_FILES.values()))
  tokenizer = Tokenizer(vocab_path)
  settings = {"max_seq_length": max_seq_length, "max_boxes": max_boxes}
  key = fingerprint(folder, splits, settings, tokenizer.vocab_path)
  is_remote = paths.is_remote(data_dir)
  paths.check_bucket(data_dir, "data_dir")
  if is_remote:
    final: Path | Any = paths.as_path(data_dir) / CORPUS_NAME
    manifest_bytes = remote.read_manifest_bytes(final, MANIFEST)
    build_root = Path(os.fspath(paths.cache_dir())) / "prepare"
  else:
    data_dir = Path(os.fspath(data_dir))
    final = data_dir / CORPUS_NAME
    manifest_path = final / MANIFEST
    manifest_bytes = manifest_path.read_bytes() if manifest_path.is_file() else None
    build_root = data_dir
  if manifest_bytes is not None and not overwrite:
    manifest = json.loads(manifest_bytes)
    if manifest.get("fingerprint") == key:
      damage = _damage(final, manifest["files"], verify_checksums)
      if damage is None:
        summary = PrepareSummary(CORPUS_NAME, os.fspath(final), True, manifest["splits"])
        log(summary.format())
        return summary
      log(f"{CORPUS_NAME}: {damage}; rebuilding")
    else:
      log(f"{CORPUS_NAME}: inputs or settings changed since {manifest.get('created')}; "
          "rebuilding")

  start = time.perf_counter()
  build_root.mkdir(parents=True, exist_ok=True)
  _remove_stale(build_root, CORPUS_NAME)
  build_dir = build_root / f".{CORPUS_NAME}.incomplete-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  uploaded, upload_seconds = 0, 0.0
  try:
    counts = _build(folder, splits, tokenizer, settings, key, build_dir, progress, log)
    if is_remote:
      upload_start = time.perf_counter()
      uploaded = remote.publish(build_dir, final, MANIFEST)
      upload_seconds = time.perf_counter() - upload_start
    else:
      old = data_dir / f".{CORPUS_NAME}.old-{uuid.uuid4().hex[:8]}"
      if final.exists():
        final.rename(old)
      build_dir.rename(final)
      shutil.rmtree(old, ignore_errors=True)
  finally:
    if build_dir.exists():
      shutil.rmtree(build_dir, ignore_errors=True)
  summary = PrepareSummary(CORPUS_NAME, os.fspath(final), False, counts,
                           time.perf_counter() - start, uploaded, upload_seconds)
  log(summary.format())
  return summary
