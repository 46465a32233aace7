"""Writing the whole release: image pools, feature LMDBs, every task's dataset, clean ids.

:func:`write_release` does the work in a fixed order (so the bytes are the
same on every run), one image pool at a time: a pool's detected features
are written to every LMDB that uses them and then freed, so memory holds at
most one pool's features.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from twelve_in_one.data.annotations.clean import clean_ids_path
from twelve_in_one.data.generate import layout, pretraining_corpus
from twelve_in_one.data.generate.layout import GeneratorConfig
from twelve_in_one.data.generate.parts import GeneratorPart, generated_parts
from twelve_in_one.data.generate.pools import (
    POOL_CODE,
    PoolImage,
    build_pool,
    detected_records,
    release_features,
    split_images,
    write_lmdb,
)
from twelve_in_one.tasks.registry import get_task

Progress = Callable[[str], None]


def _pool_lmdbs(pool: str, datasets_dir: str, images: list[PoolImage],
                parts: dict[str, GeneratorPart]) -> None:
  """Write every detected-region LMDB of the tasks that use the pool's images.

  Tasks that share a feature file (VQA, COCO retrieval and GuessWhat) share its keys; it is
  written once, by the first of them. A split with a feature file of its own
  (`Task.split_features`: VQA's test2015) gets the split's images, under the part's keys for it.
  """
  written: set[str] = set()
  for name, part in parts.items():
    task = get_task(name)
    if part.pool != pool:
      continue
    chosen = images if part.feature_images is None else part.feature_images(images)
    if task.features not in written:
      written.add(task.features)
      write_lmdb(os.path.join(datasets_dir, task.features),
                 detected_records(chosen, part.feature_key))
    for split, path in task.split_features:
      if path in written:
        continue
      written.add(path)
      key = part.split_feature_keys.get(split, part.feature_key)
      write_lmdb(os.path.join(datasets_dir, path),
                 detected_records(split_images(chosen, split), key))


def _clean_ids(datasets_dir: str, pools: dict[str, list[PoolImage]],
               parts: dict[str, GeneratorPart]) -> None:
  """``cache/<source>_test_ids.npy`` in every dataroot whose reader filters with it."""
  done: set[str] = set()
  for name in parts:
    task = get_task(name)
    if task.clean_source is None:
      continue
    path = str(clean_ids_path(os.path.join(datasets_dir, task.dataroot, "cache"),
                              task.clean_source))
    if path in done:
      continue
    done.add(path)
    pool = pools[task.clean_source]   # each test-id file lists the test images of its pool
    layout.write_ids(path, [image.image_id for image in split_images(pool, "test")])


def write_release(out_dir: str, config: GeneratorConfig,
                  progress: Progress | None = None) -> dict[str, Any]:
  """Write images and ``datasets/`` under ``out_dir``; returns per-dataset counts.

  Every registered task with a generator part (``parts.py``) gets its dataset.
  """
  say = progress or (lambda message: logging.info("%s", message))
  datasets_dir = os.path.join(out_dir, "datasets")
  parts = generated_parts()
  pools: dict[str, list[PoolImage]] = {}
  corpus = pretraining_corpus.CorpusWriter(config) if config.pretraining_corpus else None
  for pool in POOL_CODE:
    start = time.perf_counter()
    pools[pool] = build_pool(pool, config, out_dir)
    _pool_lmdbs(pool, datasets_dir, pools[pool], parts)
    if corpus is not None:
      corpus.add_pool(pool, pools[pool])   # while the pool's features are in memory
    release_features(pools[pool])
    say(f"pool {pool}: {len(pools[pool])} images in {time.perf_counter() - start:.1f}s")
  counts: dict[str, Any] = {}
  start = time.perf_counter()
  for name, part in parts.items():
    counts[name] = part.write(datasets_dir, pools[part.pool], config)
  _clean_ids(datasets_dir, pools, parts)
  if corpus is not None:
    counts[pretraining_corpus.CORPUS_FOLDER] = corpus.write(datasets_dir)
  say(f"annotations of {len(parts)} datasets in {time.perf_counter() - start:.1f}s")
  counts["images"] = {pool: {split: len(split_images(images, split))
                             for split in ("train", "val", "dev", "test")
                             if split_images(images, split)}
                      for pool, images in pools.items()}
  return {"counts": counts, "pools": pools}
