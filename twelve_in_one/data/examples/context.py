"""Where a task's release files are, and the image-id bookkeeping every builder shares."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twelve_in_one.data.annotations.clean import load_test_image_ids
from twelve_in_one.data.errors import DataError
from twelve_in_one.data.features import (
    DEFAULT_BOX_CLIP,
    FeatureLMDB,
    FeatureReader,
    ImageFeatures,
)
from twelve_in_one.data.tokenizer import Tokenizer

if TYPE_CHECKING:
  from twelve_in_one.tasks.registry import Task

def datasets_root(release_dir: str | os.PathLike[str]) -> Path:
  """The release's `datasets/` folder: `release_dir/datasets` if present, else `release_dir`."""
  root = Path(release_dir)
  return root / "datasets" if (root / "datasets").is_dir() else root


@dataclasses.dataclass
class BuildContext:
  """A task's release files and the shared tokenizer, for the builders of its splits.

  Attributes:
    task: the registry task (possibly `dataclasses.replace`d, e.g. with fewer regions).
    datasets_dir: the release's `datasets/` folder; the task's paths are relative to it.
    tokenizer: the WordPiece tokenizer.
    clean: apply the "clean" filter (drop training images of any task's test set), as the
      official `--clean_train_sets True` default does.
    strict_boxes: a box past its image's edge by more than the 1 px tolerance is an error;
      by default up to `DEFAULT_BOX_CLIP` px it is clipped to the image (and counted).
  """
  task: Task
  datasets_dir: Path
  tokenizer: Tokenizer
  clean: bool = True
  strict_boxes: bool = False
  _readers: dict[str, FeatureReader] = dataclasses.field(default_factory=dict)

  @property
  def dataroot(self) -> Path:
    """The task's annotation folder."""
    return self.datasets_dir / self.task.dataroot

  @property
  def reader_dataset(self) -> str:
    """Which dataset of a reader that serves several (`Task.reader_dataset`)."""
    if not self.task.reader_dataset:
      raise ValueError(f"task {self.task.name}: its reader {self.task.reader!r} serves several "
                       "datasets; the task must name one (Task.reader_dataset)")
    return self.task.reader_dataset

  @property
  def box_clip(self) -> float:
    """How many pixels past the image edge a box is clipped rather than refused."""
    return 0.0 if self.strict_boxes else DEFAULT_BOX_CLIP

  def feature_path(self, gt: bool = False, split: str | None = None) -> Path:
    """The (GT-box) feature LMDB; the detected-region one of `split` if it has its own."""
    relative = self.task.gt_features if gt else self.task.features_for(split)
    if relative is None:
      raise ValueError(f"task {self.task.name} has no GT-box feature file")
    return self.datasets_dir / relative

  def features(self, gt: bool = False, split: str | None = None) -> FeatureReader:
    """The task's (GT-box) feature LMDB, or `split`'s own detected-region one; opened once."""
    path = os.fspath(self.feature_path(gt, split))
    if path not in self._readers:
      self._readers[path] = FeatureLMDB(path, box_clip=self.box_clip)
    return self._readers[path]

  def clean_ids(self, split: str) -> frozenset[int] | None:
    """The test image ids to drop from `split`, or None when the split is not cleaned.

    Which splits are cleaned, with which test-id file, is the task's `clean_source` and
    `clean_splits` (the official readers' choice).
    """
    if not self.clean or self.task.clean_source is None:
      return None
    if split not in self.task.clean_splits:
      return None
    try:
      return load_test_image_ids(self.dataroot / "cache", [self.task.clean_source])
    except DataError as error:
      raise DataError(f"{error} (the clean filter needs it; prepare with clean=False / "
                      "--noclean_train_sets to train on every image)") from error


class ImageTable:
  """The distinct images of a split in first-use order, checked against the feature file(s).

  A missing image fails here, before anything is written, with the feature file, the image
  id and the annotation record that needs it.
  """

  def __init__(self, *readers: FeatureReader) -> None:
    self.readers = readers
    self.keys: list[str] = []
    self._index: dict[str, int] = {}

  def add(self, key: Any, source: str, where: str) -> int:
    """The index of image `key`, adding it on first use."""
    key = str(key)
    index = self._index.get(key)
    if index is not None:
      return index
    for reader in self.readers:
      if key not in reader:
        try:
          reader[key]  # raises the reader's DataError (file, id, nearby ids)
        except DataError as error:
          raise DataError(f"{error} (needed by {source}: {where})") from error
    index = self._index[key] = len(self.keys)
    self.keys.append(key)
    return index

  def read(self, index: int, reader: int = 0) -> ImageFeatures:
    """Image `index` read (and validated) from reader number `reader`."""
    return self.readers[reader][self.keys[index]]

  def __len__(self) -> int:
    return len(self.keys)
