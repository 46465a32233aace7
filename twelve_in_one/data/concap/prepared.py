"""The prepared Conceptual Captions corpus: TFDS array_record datasets, and opening them.

`prepare_corpus` writes `<data_dir>/conceptual_captions/`:

    prepared.json            manifest, written last: fingerprint, layout, counts, and each
                             file's size, SHA-256 and record count (`integrity.py`)
    examples/1.0.0/          TFDS dataset `conceptual_captions`, config `examples`: one record
                             per corpus record, in the LMDB's order
    captions/1.0.0/          config `captions`: one record per caption of the split's caption
                             file, in file order (the pool of random other captions)

An example record holds what does not change between epochs: the caption's word pieces (cut to
`max_seq_length - 2`), the region features and class distributions as float16, the normalised
locations with the area as 5th coordinate, and the `IoU > 0.4` flags between its boxes
(`region_geometry.py`). Masking, the random other caption and the global region are drawn when the
pipeline reads a record (`masking.py`), so each epoch masks afresh.

The shards and metadata are those of every prepared task (`tfds_format.write_split`,
`write_metadata`, read with `tfds.builder_from_directory(...).as_data_source(split)`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from twelve_in_one import paths
from twelve_in_one.data import remote
from twelve_in_one.data.concap.masking import PretrainingLayout
from twelve_in_one.data.errors import DataError
from twelve_in_one.data.integrity import check_files
from twelve_in_one.data.tfds_format import MANIFEST, TFDS_VERSION, RecordDecoder

CORPUS_NAME = "conceptual_captions"
# 1: the layout and content above; a change of either bumps it and `prepare` rebuilds.
CORPUS_FORMAT_VERSION = 1
EXAMPLES, CAPTIONS = "examples", "captions"

_F = tfds.features


def _tensor(shape: tuple[int | None, ...], dtype: Any) -> _F.Tensor:
  # BYTES stores the raw buffer (see `tfds_format`); it is also what `RecordDecoder` reads.
  return _F.Tensor(shape=shape, dtype=dtype, encoding=_F.Encoding.BYTES)


def example_features(layout: PretrainingLayout) -> _F.FeaturesDict:
  """The TFDS features of the corpus' example records (region rows unpadded)."""
  return _F.FeaturesDict({
      "caption_ids": _tensor((None,), np.int32),
      "image_feat": _tensor((None, layout.feature_dim), np.float16),
      "image_target": _tensor((None, layout.num_classes), np.float16),
      "image_loc": _tensor((None, 5), np.float32),
      "overlap": _tensor((None,), np.uint8),
      "image_id": _F.Text(),
  })


def caption_features() -> _F.FeaturesDict:
  """The TFDS features of the caption pool's records."""
  return _F.FeaturesDict({"caption_ids": _tensor((None,), np.int32)})


class PreparedCorpus:
  """A prepared corpus on disk: its manifest, layout and TFDS sources.

  `path` is the local folder read (a bucket's mirror on this machine); `location` is where the
  user keeps it, named in errors.
  """

  def __init__(self, path: Path, manifest: dict[str, Any],
               location: Path | epath.Path | None = None) -> None:
    self.path = path
    self.location = path if location is None else location
    self.manifest = manifest
    self.layout = PretrainingLayout(**manifest["layout"])

  @property
  def splits(self) -> list[str]:
    return list(self.manifest["splits"])

  def split_info(self, split: str) -> dict[str, Any]:
    """The manifest entry of `split` (`examples`, `captions`, `source`)."""
    if split not in self.manifest["splits"]:
      raise ValueError(f"{CORPUS_NAME}: split {split!r} was not prepared in "
                       f"{os.fspath(self.location)}; prepared splits: {self.splits}")
    return self.manifest["splits"][split]

  def raw_source(self, config: str, split: str) -> tuple[Any, RecordDecoder]:
    """The split's serialized records of `config` (random access) and their decoder."""
    self.split_info(split)
    builder = tfds.builder_from_directory(os.fspath(self.path / config / TFDS_VERSION))
    source = builder.as_data_source(split=split)
    return source.data_source, RecordDecoder(source.dataset_info.features)


def _prepare_hint(data_dir: Any) -> str:
  return (f"`twelve-in-one prepare --task {CORPUS_NAME} --data_dir {os.fspath(data_dir)} "
          "--release_dir <folder with training_feat_all.lmdb>` to have been run")


def open_corpus(data_dir: str | os.PathLike[str]) -> PreparedCorpus:
  """Open `<data_dir>/conceptual_captions`, checking every file against its manifest.

  A `gs://` data_dir is mirrored to this machine's cache first (as for tasks, `remote.mirror`).

  Raises:
    DataError: not prepared, prepared by another format version, or a damaged file (named).
    paths.LocationError: the bucket does not exist or cannot be read.
  """
  location = paths.as_path(data_dir) / CORPUS_NAME
  is_remote = paths.is_remote(location)
  if is_remote:
    manifest_bytes = remote.read_manifest_bytes(location, MANIFEST)
  else:
    location = Path(os.fspath(location))
    manifest_path = location / MANIFEST
    manifest_bytes = manifest_path.read_bytes() if manifest_path.is_file() else None
  if manifest_bytes is None:
    paths.check_bucket(data_dir, "data_dir")
    raise DataError.at(location, CORPUS_NAME, "is not prepared (no complete prepared corpus "
                       "here; an interrupted prepare leaves none)", _prepare_hint(data_dir))
  manifest = json.loads(manifest_bytes)
  if manifest.get("format_version") != CORPUS_FORMAT_VERSION:
    raise DataError.at(location / MANIFEST, "format_version",
                       f"is {manifest.get('format_version')}",
                       f"{CORPUS_FORMAT_VERSION}; re-run prepare")
  files = manifest["files"]
  if is_remote:
    def verify(folder: Path, downloaded: bool) -> None:
      check_files(folder, files, shown_as=location if downloaded else None,
                  checksums=downloaded)

    path = remote.mirror(location, manifest_bytes, MANIFEST, verify)
  else:
    check_files(location, files)
    path = location
  return PreparedCorpus(path, manifest, location)


def num_examples(data_dir: str | os.PathLike[str], split: str) -> int:
  """The number of examples (corpus records) of a prepared split."""
  return int(open_corpus(data_dir).split_info(split)["examples"])
