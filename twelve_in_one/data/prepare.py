"""`prepare`: the official release of one task -> its prepared TFDS datasets (array_record).

    summary = prepare("vqa", release_dir="/data/12-in-1", data_dir="/data/prepared")
    print(summary.format())

What it guarantees:

* **Idempotent.** The manifest records a fingerprint of everything the output depends on
  (format version, the task's shape fields, splits, clean flag, vocabulary SHA-256, and size
  and mtime of every input file: the task's annotation folder and feature LMDBs). A second run
  with the same inputs finds the same fingerprint, checks that every output file still has the
  size and record count the manifest records (`integrity.py`), and returns at once
  (`up_to_date=True`). A damaged file (a truncated shard) is named in one log line and the task
  rebuilt; `verify_checksums=True` also compares every file's SHA-256.
* **Boxes a few pixels past the image edge** are clipped to the image and counted in the
  summary and the manifest (`data/regions.py`); `strict_boxes=True` refuses them instead.
* **Never a complete-looking partial dataset.** Everything is built in a hidden sibling
  `.<task>.incomplete-<pid>-<id>` and moved into place with one `rename` once the manifest,
  written last, is there. `open_prepared` only accepts a folder with a manifest. An
  interrupted run leaves at most the hidden folder, removed by the next run; a rebuild over an
  older dataset keeps the older one until the new one is complete (then, for the instant
  between two renames, neither is in place, never a partial one).
* **Buckets.** With `data_dir=gs://...` the dataset is built in a hidden folder of this
  machine's cache (`paths.cache_dir()/prepare`; array_record writes only local files) and then
  uploaded: the old manifest is deleted first, the new one uploaded last (`remote.publish`),
  so an interrupted upload leaves nothing `open_prepared` accepts, and the next run replaces
  it. The up-to-date check reads the remote manifest only. The release stays on a local disk
  (or a gcsfuse mount): its LMDB feature files are memory-mapped.
* **Exactly the requested splits.** A run asking for other splits (or other settings)
  rebuilds the task's folder with those splits only.
* **Random retrieval negatives are *not* stored**: they are drawn at pipeline time from
  `example_rng(seed, epoch, index)` (see `examples/matching.py`), so the prepared data does not
  depend on a seed, each epoch sees fresh negatives as in the official sampler, and the pipeline
  stays process-count invariant.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tqdm
from etils import epath

from twelve_in_one import paths
from twelve_in_one.data import remote
from twelve_in_one.data.errors import DataError
from twelve_in_one.data.examples import (
    BuildContext,
    SplitExamples,
    build_split,
    datasets_root,
    task_splits,
)
from twelve_in_one.data.examples.common import (
    CLIPPED_REF_BOXES,
    CLIPPED_REGION_BOXES,
    REF_BOX_CLIPPED,
)
from twelve_in_one.data.integrity import check_files, check_remote_sizes, describe_files
from twelve_in_one.data.tfds_format import (
    EXAMPLES,
    FORMAT_VERSION,
    IMAGES,
    MANIFEST,
    SHAPE_FIELDS,
    TFDS_VERSION,
    example_features,
    image_features,
    write_metadata,
    write_split,
)
from twelve_in_one.data.tokenizer import Tokenizer, file_sha256
from twelve_in_one.tasks.registry import get_task


@dataclasses.dataclass
class PrepareSummary:
  """What `prepare` did: per split, examples and images written and records skipped."""
  task: str
  path: str
  up_to_date: bool
  splits: dict[str, dict[str, Any]]
  seconds: float = 0.0
  uploaded_bytes: int = 0          # gs:// data_dir only: what the upload sent, and how long
  upload_seconds: float = 0.0

  def format(self) -> str:
    """A human-readable table of counts and skips."""
    verb = "already prepared (inputs unchanged), nothing to do" if self.up_to_date else (
        f"prepared in {self.seconds:.1f} s")
    if self.uploaded_bytes:
      verb += (f" (uploaded {self.uploaded_bytes / 1e6:.1f} MB in {self.upload_seconds:.1f} s,"
               f" {self.uploaded_bytes / 1e6 / max(self.upload_seconds, 1e-9):.0f} MB/s)")
    lines = [f"{self.task}: {verb}: {self.path}",
             f"  {'split':<10} {'examples':>10} {'images':>8}  skipped or clipped"]
    for split, info in self.splits.items():
      skipped = "; ".join(f"{reason}: {count}" for reason, count in info["skipped"].items())
      lines.append(f"  {split:<10} {info['examples']:>10} {info['images']:>8}  "
                   f"{skipped or '-'}")
    return "\n".join(lines)


def _input_files(context: BuildContext) -> list[Path]:
  """Every file the task's builders may read: its annotation folder and feature files."""
  roots = [context.dataroot, context.feature_path()]
  roots += [context.datasets_dir / path for _, path in context.task.split_features]
  if context.task.gt_features:
    roots.append(context.feature_path(gt=True))
  files: list[Path] = []
  for root in roots:
    if root.is_file():
      files.append(root)
    elif root.is_dir():
      files.extend(path for path in sorted(root.rglob("*"))
                   if path.is_file() and path.name != "lock.mdb")
  return files


def fingerprint(context: BuildContext, splits: Sequence[str]) -> str:
  """The SHA-256 over everything a prepared dataset depends on (see the module docstring)."""
  inputs = []
  for path in _input_files(context):
    stat = path.stat()
    inputs.append([os.path.relpath(path, context.datasets_dir), stat.st_size, stat.st_mtime_ns])
  payload = {
      "format_version": FORMAT_VERSION,
      "task": {field: getattr(context.task, field) for field in SHAPE_FIELDS},
      "splits": list(splits), "clean": context.clean, "box_clip": context.box_clip,
      "vocab_sha256": file_sha256(context.tokenizer.vocab_path), "inputs": inputs,
  }
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _remove_stale(data_dir: Path, task: str) -> None:
  """Remove leftovers of interrupted runs (their process is gone) and replaced datasets."""
  for path in data_dir.glob(f".{task}.*"):
    parts = path.name.split(".")[-1].split("-")
    if parts[0] == "incomplete" and len(parts) >= 2 and parts[1].isdigit():
      try:
        os.kill(int(parts[1]), 0)
        continue            # a running prepare owns it
      except ProcessLookupError:
        pass
      except PermissionError:
        continue
    shutil.rmtree(path, ignore_errors=True)


def _write_split(build_dir: Path, name: str, split: SplitExamples, progress: bool,
                 features: tuple[Any, Any]) -> tuple[Any, Any]:
  """Write one split's image and example records; returns their TFDS SplitInfos."""
  layout = split.layout
  finished: list[dict[str, Any] | None] = [None] * len(split)
  users: list[list[int]] = [[] for _ in split.image_keys]
  if split.finish_record is not None:
    for index, record in enumerate(split.records):
      users[int(np.asarray(record["image_index"]).reshape(-1)[0])].append(index)

  def images():
    for index in tqdm.tqdm(range(len(split.image_keys)), desc=f"{name}/{split.split} images",
                           unit=" images", disable=not progress, mininterval=1.0):
      block = split.image(index)
      split.skipped.add(CLIPPED_REGION_BOXES, block.clipped)
      # Targets that depend on the image's boxes (IoU) are computed on this single read.
      for user in users[index]:
        finished[user] = split.final_record(user, [block])
      record = block.to_record()
      if not np.isfinite(record["image_feat"]).all():
        raise DataError.at(split.source, f"image {block.image_id!r}", "has features beyond "
                           "the float16 range (|x| > 65504)", "features that fit in float16")
      yield record

  def examples():
    for index in tqdm.tqdm(range(len(split)), desc=f"{name}/{split.split} examples",
                           unit=" examples", disable=not progress, mininterval=1.0):
      record = finished[index] if finished[index] is not None else split.final_record(index)
      split.skipped.add(CLIPPED_REF_BOXES, int(bool(record.get(REF_BOX_CLIPPED))))
      yield record

  image_bytes = layout.regions * (layout.feature_dim * 2 + 32)
  example_bytes = 8 * layout.seq_len + 4 * max(layout.regions, layout.num_classes) + 64
  image_info = write_split(build_dir / IMAGES / TFDS_VERSION, name, split.split, features[1],
                           images(), len(split.image_keys), image_bytes)
  example_info = write_split(build_dir / EXAMPLES / TFDS_VERSION, name, split.split, features[0],
                             examples(), len(split), example_bytes)
  if split.tables:
    np.savez(build_dir / f"tables-{split.split}.npz", **split.tables)
  return example_info, image_info


def prepare(task: Any, release_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str],
            *, splits: Sequence[str] | None = None, vocab_path: str | None = None,
            clean: bool = True, overwrite: bool = False, progress: bool = True,
            strict_boxes: bool = False, verify_checksums: bool = False,
            log: Callable[[str], None] = print) -> PrepareSummary:
  """Prepare one task's TFDS datasets under `<data_dir>/<task>`.

  Args:
    task: a registry `Task` (or its name); shape fields may be `dataclasses.replace`d. The
      name `conceptual_captions` prepares the pretraining corpus (`concap.prepare_corpus`:
      `release_dir` is its folder; `clean` and `strict_boxes` do not apply).
    release_dir: the official release root (holding `datasets/`) or that folder itself.
    data_dir: where prepared datasets live: a local folder or a `gs://` URL.
    splits: the splits to prepare (default: the task's train, val and eval splits).
    vocab_path: a bert-base-uncased style `vocab.txt` (default: the checked built-in one).
    clean: apply the clean filter to training splits (the official default).
    overwrite: rebuild even if an up-to-date dataset exists.
    progress: show tqdm progress bars.
    strict_boxes: refuse boxes past the image edge by more than 1 px instead of clipping
      those within `regions.DEFAULT_BOX_CLIP` px (and counting them).
    verify_checksums: before answering "already prepared", also compare every file's SHA-256
      with the manifest (reads every byte; local data_dir only, a bucket's sizes are checked).
    log: where to print status lines.

  Returns:
    The summary; `up_to_date=True` when nothing had to be done.

  Raises:
    DataError: bad input, naming the file and the record (nothing is left that looks
      prepared).
    paths.LocationError: `data_dir`'s bucket is missing, or `release_dir` is on a bucket.
  """
  if isinstance(task, str):
    # The pretraining corpus is prepared by its own module (it imports this one).
    from twelve_in_one.data.concap import prepare as concap
    if task == concap.CORPUS_NAME:
      return concap.prepare_corpus(release_dir, data_dir, splits=splits, vocab_path=vocab_path,
                                   overwrite=overwrite, progress=progress,
                                   verify_checksums=verify_checksums, log=log)
    task = get_task(task)
  if paths.is_remote(release_dir):
    raise paths.LocationError(
        f"release_dir {os.fspath(release_dir)}: the official release must be on a local disk "
        "or a gcsfuse mount (`python launch/tpu_vm.py mount ...`), not read from a bucket; its "
        "LMDB feature files are memory-mapped")
  splits = list(dict.fromkeys(splits)) if splits else task_splits(task)
  is_remote = paths.is_remote(data_dir)
  paths.check_bucket(data_dir, "data_dir")
  context = BuildContext(task, datasets_root(release_dir), Tokenizer(vocab_path), clean,
                         strict_boxes)
  key = fingerprint(context, splits)
  if is_remote:
    final: Path | epath.Path = paths.as_path(data_dir) / task.name
    manifest_bytes = remote.read_manifest_bytes(final, MANIFEST)
    # array_record writes only local files: build in this machine's cache, then upload.
    build_root = Path(os.fspath(paths.cache_dir())) / "prepare"
  else:
    data_dir = Path(os.fspath(paths.as_path(data_dir)))
    final = data_dir / task.name
    manifest_path = final / MANIFEST
    manifest_bytes = manifest_path.read_bytes() if manifest_path.is_file() else None
    build_root = data_dir
  if manifest_bytes is not None and not overwrite:
    manifest = json.loads(manifest_bytes)
    if manifest.get("format_version") != FORMAT_VERSION:
      log(f"{task.name}: prepared in format {manifest.get('format_version')}, this version "
          f"writes format {FORMAT_VERSION} (file sizes, record counts and checksums in the "
          "manifest); rebuilding")
    elif manifest.get("fingerprint") == key:
      damage = _damage(final, manifest["files"], verify_checksums)
      if damage is None:
        summary = PrepareSummary(task.name, os.fspath(final), True, manifest["splits"])
        log(summary.format())
        return summary
      log(f"{task.name}: {damage}; rebuilding")
    else:
      log(f"{task.name}: inputs or settings changed since {manifest.get('created')}; "
          "rebuilding")

  start = time.perf_counter()
  build_root.mkdir(parents=True, exist_ok=True)
  _remove_stale(build_root, task.name)
  build_dir = build_root / f".{task.name}.incomplete-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  uploaded, upload_seconds = 0, 0.0
  try:
    counts = _build(task, release_dir, splits, context, key, clean, build_dir, progress, log)
    if is_remote:
      log(f"{task.name}: uploading to {os.fspath(final)}")
      upload_start = time.perf_counter()
      uploaded = remote.publish(build_dir, final, MANIFEST)
      upload_seconds = time.perf_counter() - upload_start
    else:
      old = data_dir / f".{task.name}.old-{uuid.uuid4().hex[:8]}"
      if final.exists():
        final.rename(old)
      build_dir.rename(final)
      shutil.rmtree(old, ignore_errors=True)
  finally:
    if build_dir.exists():
      shutil.rmtree(build_dir, ignore_errors=True)
  summary = PrepareSummary(task.name, os.fspath(final), False, counts,
                           time.perf_counter() - start, uploaded, upload_seconds)
  log(summary.format())
  return summary


def _damage(final: Path | epath.Path, files: dict[str, Any], checksums: bool) -> str | None:
  """Why the prepared folder `final` does not match its manifest's `files`, or None."""
  try:
    if paths.is_remote(final):
      check_remote_sizes(final, files)
    else:
      check_files(final, files, checksums=checksums)
  except DataError as error:
    return str(error)
  return None


def _build(task: Any, release_dir: str | os.PathLike[str], splits: list[str],
           context: BuildContext, key: str, clean: bool, build_dir: Path, progress: bool,
           log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
  """Writes the task's datasets and, last, its manifest into local `build_dir`; returns the
  per-split counts."""
  infos: dict[str, list[Any]] = {EXAMPLES: [], IMAGES: []}
  counts: dict[str, dict[str, Any]] = {}
  layout = None
  for split_name in splits:
    log(f"{task.name}/{split_name}: reading annotations")
    split = build_split(task, release_dir, split_name, context=context)
    if layout is None:
      layout = split.layout
      features = (example_features(layout), image_features(layout))
    example_info, image_info = _write_split(build_dir, task.name, split, progress, features)
    infos[EXAMPLES].append(example_info)
    infos[IMAGES].append(image_info)
    counts[split_name] = {"examples": len(split), "images": len(split.image_keys),
                          "skipped": dict(split.skipped.as_dict()), "source": split.source,
                          "hard_negatives": split.hard_negatives}
  for config, feature in zip((EXAMPLES, IMAGES), features, strict=True):
    write_metadata(build_dir / config / TFDS_VERSION, task.name, config, feature, infos[config],
                   f"twelve_in_one prepared {task.name} ({config})")
  manifest = {
      "format_version": FORMAT_VERSION, "fingerprint": key,
      "task": {field: getattr(task, field) for field in SHAPE_FIELDS},
      "layout": dataclasses.asdict(layout), "splits": counts, "clean": clean,
      "strict_boxes": context.strict_boxes, "vocab": os.fspath(context.tokenizer.vocab_path),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      # Last: what `integrity.check_files` compares the folder with on every open.
      "files": describe_files(build_dir, exclude=(MANIFEST,)),
  }
  (build_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
  return counts
