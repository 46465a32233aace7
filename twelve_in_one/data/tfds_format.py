"""The prepared-dataset format: TFDS array_record datasets written and read without TensorFlow.

A prepared task lives in `<data_dir>/<task>/`:

    prepared.json              manifest, written last: fingerprint, layout, counts, skips, and
                               each file's size, SHA-256 and record count (`integrity.py`)
    examples/1.0.0/            TFDS dataset `<task>`, config `examples`: one record per example
    images/1.0.0/              TFDS dataset `<task>`, config `images`: one record per image
    tables-<split>.npz         retrieval only: captions per image, hard negatives

On a bucket (`data_dir=gs://...`) the same folder is uploaded by `prepare` and mirrored to a
local cache by `open_prepared` before reading (array_record opens only local files); see
`remote.py`.

Both TFDS datasets have the task's splits and are read with
`tfds.builder_from_directory(<dir>/examples/1.0.0).as_data_source(split)` (no builder class,
no TensorFlow). Example records hold token ids, the index of their image(s) in the split's
image records, the official id, and the target in compact form; image records hold the
region rows as float16. `common.assemble_example` joins them.

Why not `tfds.core.GeneratorBasedBuilder.download_and_prepare`: without TensorFlow it works
only for small data. Its writer buffers every serialized example in memory and, past 1 GB,
spills to temporary buckets through `tf.io.gfile` (ModuleNotFoundError: tensorflow); it also
reorders records by key hash. We write the array_record shards directly (uncompressed,
`group_size:1` for fast random access) with the features' own serializer and record the
metadata with `tfds.core.DatasetInfo`, the documented route for externally written shards
(`tfds.folder_dataset.write_metadata`). Record `i` of a split is then example `i`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from etils import epath
from tensorflow_datasets.proto import tf_example_pb2

from twelve_in_one import paths
from twelve_in_one.data import remote
from twelve_in_one.data.errors import DataError
from twelve_in_one.data.examples.common import Layout
from twelve_in_one.data.integrity import check_files

# 2: the manifest records every file's size, SHA-256 and record count (`files`). Version-1
# datasets hold the same records but nothing to check them against: prepare rebuilds them.
FORMAT_VERSION = 2
TFDS_VERSION = "1.0.0"
MANIFEST = "prepared.json"
EXAMPLES, IMAGES = "examples", "images"
SHARD_BYTES = 1 << 30
# group_size:1 makes every record its own chunk (random access reads one record); the float16
# features barely compress, and decompression would cost more than the disk reads.
WRITER_OPTIONS = "group_size:1,uncompressed"
FILE_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"

_F = tfds.features
_BYTES = _F.Encoding.BYTES


def _tensor(shape: tuple[int | None, ...], dtype: Any) -> _F.Tensor:
  # BYTES encoding stores the raw buffer; the default encoding writes float lists, far slower
  # to encode and decode for 2048-wide features.
  return _F.Tensor(shape=shape, dtype=dtype, encoding=_BYTES)


def example_features(layout: Layout) -> _F.FeaturesDict:
  """The TFDS features of a task's example records."""
  spec: dict[str, Any] = {
      "input_ids": _tensor((layout.seq_len,), np.int32),
      "input_mask": _tensor((layout.seq_len,), np.int32),
      "image_index": _tensor((layout.images,), np.int32),
      "example_id": _F.Scalar(dtype=np.int64),
      "example_key": _F.Text(),
  }
  if layout.kind == "classifier":
    spec["answer_labels"] = _tensor((None,), np.int32)
    spec["answer_scores"] = _tensor((None,), np.float32)
  elif layout.kind == "onehot":
    spec["target"] = _tensor((layout.num_classes,), np.float32)
  elif layout.kind == "grounding":
    spec["target"] = _tensor((layout.regions,), np.float32)
  elif layout.kind == "pointing":
    spec["multiple_choice_ids"] = _tensor((layout.num_candidates,), np.int32)
    spec["target"] = _tensor((layout.num_candidates,), np.float32)
  return _F.FeaturesDict(spec)


def image_features(layout: Layout) -> _F.FeaturesDict:
  """The TFDS features of a task's image records (rows unpadded, at most `regions`)."""
  return _F.FeaturesDict({
      "image_feat": _tensor((None, layout.feature_dim), np.float16),
      "image_loc": _tensor((None, 5), np.float32),
      "image_mask": _tensor((None,), np.int32),
      "image_id": _F.Text(),
  })


def write_split(version_dir: Path, name: str, split: str, features: _F.FeaturesDict,
                records: Iterable[Mapping[str, Any]], count: int, record_bytes: int
                ) -> tfds.core.SplitInfo:
  """Serialize `count` records into array_record shards of about `SHARD_BYTES`.

  Raises:
    ValueError: the iterable yields a different number of records than `count`.
  """
  num_shards = max(1, min(count, math.ceil(count * record_bytes / SHARD_BYTES)))
  bounds = [count * shard // num_shards for shard in range(num_shards + 1)]
  template = tfds.core.ShardedFileTemplate(
      data_dir=version_dir, template=FILE_TEMPLATE, dataset_name=name, split=split,
      filetype_suffix="array_record")
  version_dir.mkdir(parents=True, exist_ok=True)
  keys = list(features.keys())
  iterator = iter(records)
  written = 0
  for shard in range(num_shards):
    path = template.sharded_filepath(shard_index=shard, num_shards=num_shards)
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), WRITER_OPTIONS)
    try:
      for _ in range(bounds[shard + 1] - bounds[shard]):
        record = next(iterator)
        writer.write(features.serialize_example({key: record[key] for key in keys}))
        written += 1
    finally:
      writer.close()
  if written != count or next(iterator, None) is not None:
    raise ValueError(f"{name}/{split}: expected {count} records, got a different number")
  num_bytes = sum(os.path.getsize(template.sharded_filepath(shard_index=shard,
                                                            num_shards=num_shards))
                  for shard in range(num_shards))
  return tfds.core.SplitInfo(name=split, shard_lengths=[bounds[i + 1] - bounds[i]
                                                        for i in range(num_shards)],
                             num_bytes=num_bytes, filename_template=template)


def write_metadata(version_dir: Path, name: str, config: str, features: _F.FeaturesDict,
                   split_infos: list[tfds.core.SplitInfo], description: str) -> None:
  """Write `dataset_info.json` and `features.json` so TFDS can read the shards."""
  identity = tfds.core.dataset_info.DatasetIdentity(
      name=name, version=tfds.core.Version(TFDS_VERSION), data_dir=os.fspath(version_dir),
      module_name="", config_name=config)
  info = tfds.core.DatasetInfo(builder=identity, features=features, description=description)
  info.set_file_format("array_record")
  info.set_splits(tfds.core.SplitDict(split_infos))
  info.write_to_directory(version_dir)


class RecordDecoder:
  """Decode our own records straight from the serialized tf.train.Example.

  Equivalent to the TFDS source's decoding for the features of this module (BYTES tensors,
  int64 scalars, text) but without its generic per-feature machinery and copies: tensors are
  zero-copy views of the record's bytes, which matters at thousands of examples per second
  (BENCHMARKS.md, input pipeline); `test_pipeline` checks it against TFDS decoding.
  """

  def __init__(self, features: _F.FeaturesDict) -> None:
    self._fields = []
    for key, feature in features.items():
      if isinstance(feature, _F.Text):
        self._fields.append((key, "text", None, None))
      elif isinstance(feature, _F.Scalar):
        self._fields.append((key, "scalar", None, None))
      elif isinstance(feature, _F.Tensor):
        shape = tuple(-1 if dim is None else dim for dim in feature.shape)
        self._fields.append((key, "tensor", feature.np_dtype, shape))
      else:
        raise TypeError(f"feature {key!r}: no decoder for {type(feature).__name__}")

  def __call__(self, serialized: bytes) -> dict[str, Any]:
    feature_map = tf_example_pb2.Example.FromString(serialized).features.feature
    record: dict[str, Any] = {}
    for key, kind, dtype, shape in self._fields:
      feature = feature_map[key]
      if kind == "tensor":
        record[key] = np.frombuffer(feature.bytes_list.value[0], dtype).reshape(shape)
      elif kind == "scalar":
        record[key] = feature.int64_list.value[0]
      else:
        record[key] = feature.bytes_list.value[0]
    return record


class PreparedTask:
  """A prepared task on disk: its manifest, layout and the paths of its TFDS datasets.

  `path` is the local folder read (for a bucket, this machine's mirror of it); `location` is
  where the user keeps it (the gs:// URL), named in error messages.
  """

  def __init__(self, path: Path, manifest: dict[str, Any],
               location: Path | epath.Path | None = None) -> None:
    self.path = path
    self.location = path if location is None else location
    self.manifest = manifest
    self.layout = Layout(**manifest["layout"])

  def version_dir(self, config: str) -> Path:
    return self.path / config / TFDS_VERSION

  @property
  def splits(self) -> list[str]:
    return list(self.manifest["splits"])

  def split_info(self, split: str) -> dict[str, Any]:
    """The manifest entry of `split` (counts, skips, hard_negatives)."""
    if split not in self.manifest["splits"]:
      raise ValueError(f"task {self.layout.task}: split {split!r} was not prepared in "
                       f"{os.fspath(self.location)}; prepared splits: {self.splits}")
    return self.manifest["splits"][split]

  def source(self, config: str, split: str) -> Any:
    """The random-access TFDS data source of one split of `examples` or `images`."""
    self.split_info(split)
    builder = tfds.builder_from_directory(os.fspath(self.version_dir(config)))
    return builder.as_data_source(split=split)

  def raw_source(self, config: str, split: str) -> tuple[Any, RecordDecoder]:
    """The split's serialized records (random access) and their decoder (the fast path)."""
    source = self.source(config, split)
    return source.data_source, RecordDecoder(source.dataset_info.features)

  def tables(self, split: str) -> dict[str, np.ndarray]:
    """Retrieval tables of `split` (empty for other tasks)."""
    path = self.path / f"tables-{split}.npz"
    if not path.is_file():
      return {}
    with np.load(path) as data:
      return {key: data[key] for key in data.files}


# Task fields that fix the stored shapes; a task that differs needs its own preparation.
SHAPE_FIELDS = ("head_type", "dataset", "max_seq_length", "max_region_num", "num_options",
                "num_detected_regions", "images_per_example")


def open_prepared(task: Any, data_dir: str | os.PathLike[str]) -> PreparedTask:
  """Open `<data_dir>/<task.name>` and check it was completely prepared for `task`'s shapes.

  Every file's size and every shard's record count are checked against the manifest (see
  `integrity.py`; no record is read). A `gs://` data_dir is checked through its manifest first
  (no download for a mismatch), then mirrored to this machine's cache (`remote.mirror`; reused
  while the remote manifest is unchanged and the copy intact, downloaded again otherwise) and
  read there.

  Raises:
    DataError: not prepared, left by an interrupted run (no manifest), prepared by an older
      format, or a damaged file (named).
    ValueError: prepared with other shapes than `task` asks for.
    paths.LocationError: the bucket does not exist or cannot be read.
  """
  location = paths.as_path(data_dir) / task.name
  is_remote = paths.is_remote(location)
  if is_remote:
    manifest_bytes = remote.read_manifest_bytes(location, MANIFEST)
  else:
    location = Path(os.fspath(location))
    manifest_path = location / MANIFEST
    manifest_bytes = manifest_path.read_bytes() if manifest_path.is_file() else None
  if manifest_bytes is None:
    paths.check_bucket(data_dir, "data_dir")
    raise DataError.at(location, f"task {task.name}", "is not prepared (no complete prepared "
                       "dataset here; an interrupted prepare leaves none)",
                       f"`twelve-in-one prepare --task {task.name} --data_dir {data_dir} "
                       "--release_dir ...` to have been run")
  manifest = json.loads(manifest_bytes)
  if manifest.get("format_version") != FORMAT_VERSION:
    raise DataError.at(location / MANIFEST, "format_version",
                       f"is {manifest.get('format_version')} (written by an older version, "
                       "without the file sizes and record counts this version checks)",
                       f"{FORMAT_VERSION}; re-run prepare")
  differ = {field: (manifest["task"].get(field), getattr(task, field)) for field in SHAPE_FIELDS
            if manifest["task"].get(field) != getattr(task, field)}
  if differ:
    raise ValueError(f"{os.fspath(location)} was prepared with other settings than task "
                     f"{task.name} asks for (field: (prepared, asked)): {differ}; re-run "
                     "prepare for this task")
  files = manifest["files"]
  if is_remote:
    def verify(folder: Path, downloaded: bool) -> None:
      # A fresh download is hashed in full (it is in the page cache); a reused copy is not.
      check_files(folder, files, shown_as=location if downloaded else None,
                  checksums=downloaded)

    path = remote.mirror(location, manifest_bytes, MANIFEST, verify)
  else:
    check_files(location, files)
    path = location
  return PreparedTask(path, manifest, location)
