"""The "clean" training splits: drop training images that appear in any test set.

With ``--clean_train_sets True`` (the official default) every dataset removes
from its training split the images listed in
``<dataroot>/cache/{coco,genome,flickr}_test_ids.npy``, so no task trains on another task's test images. The official
``mteval`` split is the complement: exactly the removed training images.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twelve_in_one.data.errors import DataError

# The test-id files. Which one each task's official reader filters with, and which of its
# splits it filters (the others are never cleaned), are the task's registry fields
# `clean_source` and `clean_splits`.
TEST_ID_SOURCES = ("coco", "genome", "flickr")


def clean_ids_path(cache_dir: str | os.PathLike[str], source: str) -> Path:
  """Path of ``<source>_test_ids.npy`` inside a dataset's ``cache`` folder."""
  if source not in TEST_ID_SOURCES:
    raise ValueError(f"unknown test-id source {source!r}; valid: {list(TEST_ID_SOURCES)}")
  return Path(cache_dir) / f"{source}_test_ids.npy"


def load_test_image_ids(cache_dir: str | os.PathLike[str],
                        sources: Sequence[str]) -> frozenset[int]:
  """Load and merge the ``<source>_test_ids.npy`` files as a set of int ids.

  Raises:
    DataError: a file is missing or does not hold integer ids.
  """
  image_ids: set[int] = set()
  for source in sources:
    path = clean_ids_path(cache_dir, source)
    if not path.is_file():
      raise DataError.at(path, "file", "does not exist",
                         "a numpy array of test image ids (np.save)")
    try:
      values = np.load(path, allow_pickle=False)
      # int() per element, as the official code does, accepts int or
      # numeric-string arrays alike.
      image_ids.update(int(value) for value in np.ravel(values))
    except (ValueError, OSError) as error:
      raise DataError.at(path, "file", f"cannot be read as integer ids ({error})",
                         "a numpy array of integer image ids") from error
  return frozenset(image_ids)


def _as_int(image_id: Any) -> int | None:
  # GQA ids such as "n161313" are not integers and cannot be in the lists
  # (the official int() would crash on them); they are never dropped.
  try:
    return int(image_id)
  except (TypeError, ValueError):
    return None


def _partition(entries: Iterable[dict[str, Any]], test_image_ids: frozenset[int],
               image_key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """(entries on test images, the other entries), in their original order."""
  on_test: list[dict[str, Any]] = []
  others: list[dict[str, Any]] = []
  for entry in entries:
    (on_test if _as_int(entry[image_key]) in test_image_ids else others).append(entry)
  return on_test, others


def drop_test_images(entries: Iterable[dict[str, Any]], test_image_ids: frozenset[int],
                     image_key: str = "image_id") -> tuple[list[dict[str, Any]], int]:
  """Keep the entries whose ``image_key`` is not a test image.

  Returns:
    ``(kept entries, number of entries dropped)``.
  """
  on_test, others = _partition(entries, test_image_ids, image_key)
  return others, len(on_test)


def keep_test_images(entries: Iterable[dict[str, Any]], test_image_ids: frozenset[int],
                     image_key: str = "image_id") -> tuple[list[dict[str, Any]], int]:
  """The official ``mteval`` selection: keep only the entries on test images.

  Returns:
    ``(kept entries, number of entries dropped)``.
  """
  on_test, others = _partition(entries, test_image_ids, image_key)
  return on_test, len(others)
