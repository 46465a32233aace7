"""Image-caption retrieval annotations (TASK7 COCO, TASK8 Flickr30k).

Read as the official ``retreival_dataset.py`` does: JSON-lines files with one
image per line, ``{"id": <COCO image id>, "sentences": [...]}`` for COCO and
``{"img_path": "<flickr id>.jpg", "sentences": [...]}`` for Flickr30k (other
fields such as ``img_path`` on COCO lines are ignored). Every caption becomes
one entry ``{caption, image_id}``; the training split drops clean-filter
images. The hard-negative pool pickle (``hard_negative[_cleaned].pkl``) is read
by :func:`load_hard_negatives`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from twelve_in_one.data.annotations.common import (
    CLEAN_REASON,
    PathLike,
    read_jsonl,
    read_pickle,
    require_fields,
    require_nonempty,
)
from twelve_in_one.data.errors import DataError, SkipReport

RETRIEVAL_DATASETS = ("coco", "flickr30k")
# The official file names under each dataset's dataroot.
RETRIEVAL_FILES = {
    "train": "all_data_final_train_2014.jsonline",
    "val": "all_data_final_test_set0_2014.jsonline",
}


@dataclasses.dataclass
class RetrievalAnnotations:
  """Captions of one retrieval split, indexed by image.

  Attributes:
    entries: one ``{caption, image_id}`` per caption, in file order.
    image_ids: the distinct image ids in file order (the official
      ``image_id_list`` / ``_image_entries``).
    captions_of_image: image id -> indices into ``entries`` (``imgid2entry``).
    skipped: counts of what was dropped, per reason.
    source: the JSON-lines file.
    split: the split name.
  """

  entries: list[dict[str, Any]]
  image_ids: list[int]
  captions_of_image: dict[int, list[int]]
  skipped: SkipReport
  source: str
  split: str

  def __len__(self) -> int:
    return len(self.entries)

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return iter(self.entries)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.entries[index]


def _image_id(record: dict[str, Any], dataset: str, path: str, line: int) -> int:
  field = "id" if dataset == "coco" else "img_path"
  require_fields(record, (field, "sentences"), path, f"line {line}")
  value = record[field]
  # Flickr ids are the file name's stem ("1007129816.jpg" -> 1007129816).
  text = str(value) if dataset == "coco" else os.path.basename(str(value)).split(".")[0]
  try:
    return int(text)
  except ValueError as error:
    raise DataError.at(path, f"line {line}", f"{field} {value!r} gives no integer "
                       "image id", "an integer COCO id or '<flickr id>.jpg'") from error


def load_retrieval(path: PathLike, dataset: str, split: str = "train", *,
                   clean_image_ids: frozenset[int] | None = None) -> RetrievalAnnotations:
  """Read a retrieval JSON-lines file.

  Args:
    path: the JSON-lines file.
    dataset: ``"coco"`` (image id from ``id``) or ``"flickr30k"`` (from
      ``img_path``).
    split: the split name; only ``"train"`` is clean-filtered, as official.
    clean_image_ids: test image ids to drop from the training split.

  Raises:
    DataError: a malformed line (naming file and line number), a line
      without the id field or sentences, or an empty split.
  """
  if dataset not in RETRIEVAL_DATASETS:
    raise ValueError(f"unknown retrieval dataset {dataset!r}; valid: "
                     f"{list(RETRIEVAL_DATASETS)}")
  path = os.fspath(path)
  skipped = SkipReport()
  entries: list[dict[str, Any]] = []
  captions_of_image: dict[int, list[int]] = {}
  for line, record in read_jsonl(path, "one JSON object per line with the image id and "
                                 "'sentences'"):
    image_id = _image_id(record, dataset, path, line)
    if split == "train" and clean_image_ids and image_id in clean_image_ids:
      skipped.add(CLEAN_REASON)
      continue
    sentences = record["sentences"]
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
      raise DataError.at(path, f"line {line}", "'sentences' is not a list of strings",
                         "a list of caption strings")
    if not sentences:
      # The official sampler would crash on an image without captions.
      skipped.add("image without captions")
      continue
    if image_id in captions_of_image:
      # The official code resets the image's caption list here, silently
      # orphaning the earlier captions; we keep (merge) them and count it.
      skipped.add("image listed on several lines (captions merged)")
    indices = captions_of_image.setdefault(image_id, [])
    for caption in sentences:
      indices.append(len(entries))
      entries.append({"caption": caption, "image_id": image_id})
  require_nonempty(entries, path, split)
  return RetrievalAnnotations(entries, list(captions_of_image), captions_of_image, skipped,
                              path, split)


@dataclasses.dataclass
class HardNegativePool:
  """The hard-negative pool of the retrieval training split.

  Attributes:
    image_ids: ``train_image_list``, the training image ids.
    pool: int64 [num_images, pool_size] indices into ``image_ids``: the
      nearest neighbours of each image (column 0 is the image itself).
    row_of: image id -> row of ``pool``.
  """

  image_ids: list[Any]
  pool: np.ndarray
  row_of: dict[Any, int]

  def candidates(self, image_id: Any) -> list[Any]:
    """The image ids the official sampler draws from: pool positions 1..end."""
    return [self.image_ids[int(index)] for index in self.pool[self.row_of[image_id], 1:]]


def _whole_numbers(pool: np.ndarray, path: str) -> np.ndarray:
  """A float pool, if every entry is a whole number; else DataError naming the row.

  The official ``script/generate_pool.py`` fills a ``pymp.shared.array``, whose default dtype
  is float64, so the released pools hold indices such as ``17.0``.
  """
  bad = ~np.isfinite(pool) | (pool != np.round(pool))
  if bad.any():
    row, column = (int(index) for index in np.argwhere(bad)[0])
    raise DataError.at(path, f"train_hard_pool row {row}, column {column}",
                       f"holds {float(pool[row, column])}, not a whole number",
                       "indices into train_image_list (whole numbers, stored as int or float)")
  return pool


def load_hard_negatives(path: PathLike) -> HardNegativePool:
  """Read ``hard_negative[_cleaned].pkl`` = {train_image_list, train_hard_pool}.

  Integer pools and float pools of whole numbers (what ``generate_pool.py`` writes) are read.

  Raises:
    DataError: missing keys, a pool whose row count differs from the image
      list, a fractional or non-finite index (naming its row), or pool indices outside
      the image list.
  """
  path = os.fspath(path)
  data = read_pickle(path, "a pickled dict {train_image_list, train_hard_pool}")
  require_fields(data, ("train_image_list", "train_hard_pool"), path, "top level")
  image_ids = list(data["train_image_list"])
  pool = np.asarray(data["train_hard_pool"])
  if pool.ndim != 2 or pool.shape[0] != len(image_ids) or pool.shape[1] < 2:
    raise DataError.at(path, "train_hard_pool", f"has shape {pool.shape}",
                       f"[{len(image_ids)} (len(train_image_list)), >=2]")
  if np.issubdtype(pool.dtype, np.floating):
    pool = _whole_numbers(pool, path)
  elif not np.issubdtype(pool.dtype, np.integer):
    raise DataError.at(path, "train_hard_pool", f"has dtype {pool.dtype}",
                       "integer indices into train_image_list")
  outside = (pool < 0) | (pool >= len(image_ids))
  if outside.any():
    row, column = (int(index) for index in np.argwhere(outside)[0])
    raise DataError.at(path, f"train_hard_pool row {row}, column {column}",
                       f"holds index {pool[row, column].item()!r}",
                       f"indices in [0, {len(image_ids)}) into train_image_list")
  require_nonempty(image_ids, path, "train")
  return HardNegativePool(image_ids, pool.astype(np.int64),
                          {image_id: row for row, image_id in enumerate(image_ids)})
