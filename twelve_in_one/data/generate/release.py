"""Writing the whole release: image pools, feature LMDBs, all twelve datasets, clean ids.

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

from twelve_in_one.data.annotations.clean import CLEAN_SOURCE_OF_DATASET, clean_ids_path
from twelve_in_one.data.generate import layout, pointing, qa, referring, retrieval, statements
from twelve_in_one.data.generate.layout import (
    COCO_FEATURES,
    DATAROOTS,
    FLICKR_FEATURES,
    GENOME_FEATURES,
    GQA_FEATURES,
    NLVR2_FEATURES,
    REFER_FEATURES,
    VISUAL7W_FEATURES,
    GeneratorConfig,
)
from twelve_in_one.data.generate.pools import (
    PoolImage,
    build_pool,
    detected_records,
    release_features,
    split_images,
    write_lmdb,
)

# The dataroot (registry task name) of each dataset family of clean.py.
_CLEAN_DATAROOTS = {
    "vqa": "vqa", "genome": "genome_qa", "gqa": "gqa", "retrieval_coco": "retrieval_coco",
    "retrieval_flickr30k": "retrieval_flickr30k", "refcoco": "refcoco",
    "visual7w": "visual7w", "guesswhat": "guesswhat_pointing", "snli_ve": "snli_ve",
}
_POOL_OF_SOURCE = {"coco": "coco", "genome": "genome", "flickr": "flickr"}

Progress = Callable[[str], None]


def _pool_lmdbs(pool: str, datasets_dir: str, images: list[PoolImage]) -> None:
  """Write every detected-region LMDB that uses the pool's images."""
  if pool == "coco":
    write_lmdb(os.path.join(datasets_dir, COCO_FEATURES),
               detected_records(images, lambda image: image.image_id))
    for dataset, (path, _) in REFER_FEATURES.items():
      write_lmdb(os.path.join(datasets_dir, path),
                 detected_records(referring.refer_images(images, dataset),
                                  lambda image: image.image_id))
  elif pool == "genome":
    write_lmdb(os.path.join(datasets_dir, GENOME_FEATURES),
               detected_records(images, lambda image: image.image_id))
    # GQA keys its (Visual Genome) images by id strings; Visual7W as v7w_<id>.
    write_lmdb(os.path.join(datasets_dir, GQA_FEATURES),
               detected_records(images, lambda image: str(image.image_id)))
    write_lmdb(os.path.join(datasets_dir, VISUAL7W_FEATURES),
               detected_records(images, lambda image: f"v7w_{image.image_id}"))
  elif pool == "flickr":
    write_lmdb(os.path.join(datasets_dir, FLICKR_FEATURES),
               detected_records(images, lambda image: image.image_id))
  else:
    write_lmdb(os.path.join(datasets_dir, NLVR2_FEATURES),
               detected_records(images, lambda image: image.key))


def _clean_ids(datasets_dir: str, pools: dict[str, list[PoolImage]]) -> None:
  """``cache/<source>_test_ids.npy`` in every dataroot whose reader filters with it."""
  for family, (source, _) in sorted(CLEAN_SOURCE_OF_DATASET.items()):
    cache = os.path.join(datasets_dir, DATAROOTS[_CLEAN_DATAROOTS[family]], "cache")
    test_ids = [image.image_id for image in split_images(pools[_POOL_OF_SOURCE[source]], "test")]
    layout.write_ids(str(clean_ids_path(cache, source)), test_ids)


def write_release(out_dir: str, config: GeneratorConfig,
                  progress: Progress | None = None) -> dict[str, Any]:
  """Write images and ``datasets/`` under ``out_dir``; returns per-dataset counts."""
  say = progress or (lambda message: logging.info("%s", message))
  datasets_dir = os.path.join(out_dir, "datasets")
  pools: dict[str, list[PoolImage]] = {}
  for pool in ("coco", "genome", "flickr", "nlvr2"):
    start = time.perf_counter()
    pools[pool] = build_pool(pool, config, out_dir)
    _pool_lmdbs(pool, datasets_dir, pools[pool])
    release_features(pools[pool])
    say(f"pool {pool}: {len(pools[pool])} images in {time.perf_counter() - start:.1f}s")
  coco, genome, flickr = pools["coco"], pools["genome"], pools["flickr"]
  counts: dict[str, Any] = {}
  start = time.perf_counter()
  counts["vqa"] = qa.write_vqa(datasets_dir, coco, config)
  counts["genome_qa"] = qa.write_genome(datasets_dir, genome, config)
  counts["gqa"] = qa.write_gqa(datasets_dir, genome, config)
  counts["retrieval_coco"] = retrieval.write_retrieval(datasets_dir, coco, config, "coco")
  counts["retrieval_flickr30k"] = retrieval.write_retrieval(datasets_dir, flickr, config,
                                                            "flickr30k")
  for task, dataset in (("refcoco", "refcoco"), ("refcoco_plus", "refcoco+"),
                        ("refcocog", "refcocog")):
    counts[task] = referring.write_refer(datasets_dir, coco, config, dataset)
  counts["visual7w"] = pointing.write_visual7w(datasets_dir, genome, config)
  counts["guesswhat_pointing"] = pointing.write_guesswhat(datasets_dir, coco, config)
  counts["nlvr2"] = statements.write_nlvr2(datasets_dir, pools["nlvr2"], config)
  counts["snli_ve"] = statements.write_snli_ve(datasets_dir, flickr, config)
  _clean_ids(datasets_dir, pools)
  say(f"annotations of 12 datasets in {time.perf_counter() - start:.1f}s")
  counts["images"] = {pool: {split: len(split_images(images, split))
                             for split in ("train", "val", "dev", "test")
                             if split_images(images, split)}
                      for pool, images in pools.items()}
  return {"counts": counts, "pools": pools}
