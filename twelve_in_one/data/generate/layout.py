"""Where the generated release puts every file, and the generator's settings.

The paths mirror the official release: they are
the task registry's (``twelve_in_one.tasks.registry``: each task's
``dataroot``, ``features`` and ``gt_features``, relative to the release's
``datasets/`` folder), seen through the tables below.

Output layout of ``generate(out_dir)``::

  out_dir/
    datasets/          the release (``prepare --release_dir out_dir/datasets``)
    images/<pool>/     every rendered scene as PNG, named by its feature key
    samples/           a few annotated pictures for the README
    summary.json       settings, counts and chance levels; written last

The writers at the end (:func:`write_json`, :func:`write_jsonl`,
:func:`write_pickle`, :func:`write_ids`) are deterministic: the same content
always gives the same bytes. JSON keeps insertion order with fixed
separators, pickles use protocol 4, ``.npy`` files hold no pickles.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from twelve_in_one.tasks.registry import TaskTable

# Where each registered task's files are, relative to datasets/, and the splits the generator
# writes for it: read from the task registry on every access, so they cover tasks registered
# after this import.
DATAROOTS: Mapping[str, str] = TaskTable(lambda task: task.dataroot)
FEATURES: Mapping[str, tuple[str, str | None]] = TaskTable(
    lambda task: (task.features, task.gt_features))
TRAIN_SPLITS: Mapping[str, str] = TaskTable(lambda task: task.train_split)
VAL_SPLITS: Mapping[str, str] = TaskTable(lambda task: task.val_split)

# The readers carve these validation splits off the end of one file, with
# fixed sizes (vqa.MINVAL_SIZE, gqa.MINVAL_SIZE, genome.VAL_SIZE), so the
# generator must write exactly this many questions there.
GQA_MINVAL_SIZE = 3000
GENOME_VAL_SIZE = 5000

# Image id bases per pool: COCO-, Visual Genome- and Flickr-like integer ids.
ID_BASE = {"coco": 100_001, "genome": 2_300_001, "flickr": 1_000_000_001}

# Scenes never hold more objects than this; every detector top-N keeps them all.
MAX_OBJECTS = 6
# The release keeps 100 detector boxes per image.
RELEASE_NUM_REGIONS = 100


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """Settings of one generated release (all of them go into ``summary.json``).

  Attributes:
    seed: the seed every random choice derives from.
    num_images: training scenes of each image pool (COCO-, Visual Genome- and
      Flickr-like); NLVR2 gets ``num_images // 2`` training image pairs.
    num_val_images: validation scenes per pool (the Visual Genome pool gets
      three times as many, because the release fixes its VG-QA and GQA
      validation splits at 5000 and 3000 questions).
    num_test_images: test scenes per pool (test splits, clean-split ids).
    num_regions: detector boxes kept per image (the release keeps 100; the
      reader adds the global region, so a task sees ``num_regions + 1``).
    pretraining_corpus: also write the Conceptual Captions-style corpus of
      the pools' scenes (``pretraining_corpus.py``), for pretraining.
  """

  seed: int = 0
  num_images: int = 320
  num_val_images: int = 64
  num_test_images: int = 16
  num_regions: int = 10
  pretraining_corpus: bool = False

  def __post_init__(self) -> None:
    if self.num_images < 8 or self.num_images % 2:
      raise ValueError(f"num_images must be an even number >= 8, not {self.num_images}")
    if self.num_val_images < 4 or self.num_val_images % 2:
      raise ValueError(f"num_val_images must be an even number >= 4, not "
                       f"{self.num_val_images}")
    if self.num_test_images < 4 or self.num_test_images % 2:
      raise ValueError(f"num_test_images must be an even number >= 4, not "
                       f"{self.num_test_images}")
    if not MAX_OBJECTS <= self.num_regions <= RELEASE_NUM_REGIONS:
      raise ValueError(f"num_regions must be in [{MAX_OBJECTS}, {RELEASE_NUM_REGIONS}] "
                       f"(every object of a scene must be among the boxes), not "
                       f"{self.num_regions}")

  def as_dict(self) -> dict[str, Any]:
    """The settings as a JSON-ready dict."""
    return dataclasses.asdict(self)

  def pool_sizes(self, pool: str) -> dict[str, int]:
    """Number of scenes per split of an image pool (NLVR2: image pairs)."""
    if pool == "nlvr2":
      return {"train": self.num_images // 2, "dev": self.num_val_images // 2,
              "test": self.num_test_images // 2}
    val = self.num_val_images * (3 if pool == "genome" else 1)
    return {"train": self.num_images, "val": val, "test": self.num_test_images}


# ---------------------------------------------------------------------------
# Deterministic file writers.

PICKLE_PROTOCOL = 4


def _parent(path: str) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  return path


def write_json(path: str, data: Any) -> None:
  """Write ``data`` as one JSON document."""
  with open(_parent(path), "w", encoding="utf-8") as handle:
    json.dump(data, handle, separators=(", ", ": "))
    handle.write("\n")


def write_jsonl(path: str, records: Iterable[Any]) -> int:
  """Write one JSON object per line; returns the number of lines."""
  lines = 0
  with open(_parent(path), "w", encoding="utf-8") as handle:
    for record in records:
      handle.write(json.dumps(record, separators=(", ", ": ")))
      handle.write("\n")
      lines += 1
  return lines


def write_pickle(path: str, data: Any) -> None:
  """Pickle ``data`` with :data:`PICKLE_PROTOCOL`."""
  with open(_parent(path), "wb") as handle:
    pickle.dump(data, handle, protocol=PICKLE_PROTOCOL)


def write_ids(path: str, ids: Iterable[int]) -> None:
  """Save integer image ids as an int64 ``.npy`` array (the clean-split files)."""
  np.save(_parent(path), np.asarray(sorted(int(i) for i in ids), dtype=np.int64),
          allow_pickle=False)
