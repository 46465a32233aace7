"""A generated mini 12-in-1 release: synthetic scenes in the release's own formats.

No public data can be fetched on a fresh machine, so the project makes its
own: :func:`generate` renders seeded synthetic scenes (coloured shapes, with
a scene graph), simulates a detector's top-N boxes, computes 2048-d region
features from the pixels with a fixed extractor, and writes the datasets of
all twelve tasks (and of any task registered with a generator part) with the
file names and formats of the official release. The
result goes through exactly the code path real data takes::

  twelve-in-one generate --out DIR
  twelve-in-one prepare --release_dir DIR/datasets ...

Modules, one concept each: ``layout`` (paths, settings, deterministic file
writers), ``scenes`` (scenes, scene graph, pictures), ``regions``
(detector-like boxes), ``extractor`` (region features), ``pools`` (the shared
image pools and their LMDBs), ``language`` and ``balance`` (unique
descriptions, answer balancing), ``questions`` and ``qa`` (VQA, VG-QA, GQA),
``retrieval`` (COCO/Flickr captions, hard negatives), ``referring``
(RefCOCO/+/g), ``pointing`` (Visual7W, GuessWhat), ``statements`` (NLVR2,
SNLI-VE), ``parts`` (each task's pool, writer, baselines and text length),
``release`` (the whole release), ``samples`` (pictures for the README) and
``baselines`` (chance levels and blind baselines).

Writing is atomic: the release is built in ``<out>.tmp-<pid>`` and renamed
to ``<out>`` when complete, with ``summary.json`` written last, so an
interrupted run never looks complete. Generating again into a complete
release with the same settings does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from twelve_in_one.data.generate.baselines import task_baselines
from twelve_in_one.data.generate.pretraining_corpus import CORPUS_FOLDER
from twelve_in_one.data.generate.layout import (
    DATAROOTS,
    FEATURES,
    TRAIN_SPLITS,
    VAL_SPLITS,
    GeneratorConfig,
    write_json,
)
from twelve_in_one.data.generate.parts import generated_parts
from twelve_in_one.data.generate.release import write_release
from twelve_in_one.data.generate.samples import write_samples

__all__ = ["GeneratorConfig", "SUMMARY_FILE", "generate", "read_summary"]

SUMMARY_FILE = "summary.json"
# Version 2: VQA test2015 images in a feature file of their own; the optional pretraining corpus.
FORMAT = "twelve_in_one generated release, version 3"


def read_summary(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
  """The summary of a complete generated release, or None if ``out_dir`` holds none."""
  path = os.path.join(os.fspath(out_dir), SUMMARY_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as handle:
    return json.load(handle)


def _tree_size(root: str) -> tuple[int, int]:
  count = size = 0
  for folder, _, names in os.walk(root):
    for name in names:
      count += 1
      size += os.path.getsize(os.path.join(folder, name))
  return count, size


def _summary(out_dir: str, config: GeneratorConfig, written: dict[str, Any],
             samples: list[str]) -> dict[str, Any]:
  counts = written["counts"]
  parts = generated_parts()
  baselines = task_baselines(os.path.join(out_dir, "datasets"),
                             {name: part.baselines for name, part in parts.items()})
  tasks = {}
  for task in parts:
    features, gt_features = FEATURES[task]
    tasks[task] = {"dataroot": DATAROOTS[task], "features": features,
                   "gt_features": gt_features, "train_split": TRAIN_SPLITS[task],
                   "val_split": VAL_SPLITS[task], "written": counts[task],
                   "baselines": baselines[task]}
  files, size = _tree_size(out_dir)
  return {"format": FORMAT, "config": config.as_dict(), "datasets_dir": "datasets",
          "images": counts["images"], "tasks": tasks,
          "pretraining_corpus": counts.get(CORPUS_FOLDER), "samples": samples,
          "files": files + 1, "bytes_without_summary": size}


def _existing(out_dir: str, config: GeneratorConfig) -> dict[str, Any] | None:
  """The summary of an equal complete release at ``out_dir``; raises on a different one."""
  if not os.path.exists(out_dir):
    return None
  summary = read_summary(out_dir)
  if summary is None:
    raise FileExistsError(f"{out_dir} exists but is not a generated release (no "
                          f"{SUMMARY_FILE}); remove it or choose another --out")
  if summary.get("format") != FORMAT:
    raise FileExistsError(f"{out_dir} holds a release of another format "
                          f"({summary.get('format')!r}, not {FORMAT!r}); remove it to generate "
                          "this one")
  if summary.get("config") != config.as_dict():
    raise FileExistsError(f"{out_dir} holds a release generated with {summary.get('config')}, "
                          f"not {config.as_dict()}; remove it or choose another --out")
  return summary


def generate(out_dir: str | os.PathLike[str], *, seed: int = 0, num_images: int = 320,
             num_val_images: int = 64, num_test_images: int = 16, num_regions: int = 10,
             pretraining_corpus: bool = False,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Generate the mini 12-in-1 release into ``out_dir`` (see the module docstring).

  Args:
    out_dir: the output folder; must not exist, or hold a release generated
      with the same settings (then nothing is done).
    seed: every random choice derives from it.
    num_images: training scenes per image pool (see :class:`GeneratorConfig`).
    num_val_images: validation scenes per pool.
    num_test_images: test scenes per pool.
    num_regions: detector boxes per image (the release has 100).
    pretraining_corpus: also write `datasets/conceptual_caption/`, the pretraining corpus.
    progress: called with one-line progress messages (default: logging).

  Returns:
    The summary (as in ``summary.json``: settings, counts, chance levels
    and blind baselines per task) plus ``out_dir``, ``seconds`` and
    ``skipped`` (True when the release already existed).

  Raises:
    FileExistsError: ``out_dir`` exists and is not an equal release.
    ValueError: invalid settings.
  """
  say = progress or (lambda message: logging.info("%s", message))
  config = GeneratorConfig(seed=seed, num_images=num_images, num_val_images=num_val_images,
                           num_test_images=num_test_images, num_regions=num_regions,
                           pretraining_corpus=pretraining_corpus)
  out_dir = os.path.abspath(os.fspath(out_dir))
  start = time.perf_counter()
  existing = _existing(out_dir, config)
  if existing is not None:
    say(f"{out_dir} already holds this release; nothing to do")
    return {**existing, "out_dir": out_dir, "seconds": 0.0, "skipped": True}
  staging = f"{out_dir}.tmp-{os.getpid()}"
  if os.path.exists(staging):
    shutil.rmtree(staging)
  try:
    written = write_release(staging, config, say)
    samples = write_samples(staging, written["pools"])
    summary = _summary(staging, config, written, samples)
    write_json(os.path.join(staging, SUMMARY_FILE), summary)
    try:
      os.rename(staging, out_dir)
    except OSError:
      # Another process finished the same release first.
      if _existing(out_dir, config) is None:
        raise
      shutil.rmtree(staging)
      return {**summary, "out_dir": out_dir, "seconds": time.perf_counter() - start,
              "skipped": True}
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  seconds = time.perf_counter() - start
  say(f"wrote {summary['files']} files ({summary['bytes_without_summary'] / 2**20:.0f} MiB) "
      f"to {out_dir} in {seconds:.1f}s")
  return {**summary, "out_dir": out_dir, "seconds": seconds, "skipped": False}
