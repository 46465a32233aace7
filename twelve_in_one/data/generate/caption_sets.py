"""Image-caption retrieval datasets (COCO- and Flickr30k-style) with hard-negative pools.

Each image gets five distinct captions (:func:`captions`) built from its
scene: object lists, relations, counts and extremes. Images come in twins
that differ in one attribute of one object; three of the five captions of
both twins mention that object, so a twin's caption is a hard negative that
differs from a true caption in one attribute only.

Files under each dataroot:

* ``all_data_final_train_2014.jsonline`` / ``all_data_final_test_set0_2014.jsonline``
  (train / val): ``{"sentences": [5 captions], "id", "img_path"}``; COCO
  reads the id from ``id``, Flickr from ``img_path`` (``"<id>.jpg"``);
* ``hard_negative.pkl`` and ``hard_negative_cleaned.pkl``:
  ``{"train_image_list": [ids], "train_hard_pool": int64 [n, min(100, n)]}``,
  each row the nearest training images by Euclidean distance between mean
  region features (as the official ``script/generate_pool.py`` computes
  it), column 0 the image itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from twelve_in_one.data.generate import layout, language
from twelve_in_one.data.generate.layout import DATAROOTS, GeneratorConfig
from twelve_in_one.tasks.registry import get_task
from twelve_in_one.data.generate.pools import PoolImage, split_images
from twelve_in_one.data.generate.scenes import Scene, SceneObject, above, left_of

TRAIN_FILE = "all_data_final_train_2014.jsonline"
VAL_FILE = "all_data_final_test_set0_2014.jsonline"
CAPTIONS_PER_IMAGE = 5
POOL_SIZE = 100
MAX_PIECES = 30 - 2


def _a(obj: SceneObject, attributes: Sequence[str] = ("colour", "shape")) -> str:
  return language.a(language.noun_phrase(obj, attributes))


def _caption_options(scene: Scene, rng: np.random.Generator) -> list[tuple[str, frozenset[int]]]:
  """Captions true of ``scene``, each with the objects it mentions."""
  objects = scene.objects
  n = len(objects)
  options: list[tuple[str, frozenset[int]]] = []
  for a, b in language.pairs(n):
    if a < b:
      options.append((f"{_a(objects[a], ('size', 'colour', 'shape'))} and "
                      f"{_a(objects[b], ('size', 'colour', 'shape'))}.", frozenset((a, b))))
    if left_of(objects[a], objects[b]):
      options.append((f"{_a(objects[a])} to the left of {_a(objects[b])}.", frozenset((a, b))))
    if above(objects[a], objects[b]):
      options.append((f"{_a(objects[a])} above {_a(objects[b])}.", frozenset((a, b))))
  for k, obj in enumerate(objects):
    options.append((f"{language.number_word(n)} shapes on a plain background, including "
                    f"{_a(obj, ('size', 'colour', 'shape'))}.", frozenset((k,))))
    others = [o for j, o in enumerate(objects) if j != k]
    for word, relation in (("leftmost", lambda x, y: left_of(x, y)),
                           ("topmost", lambda x, y: above(x, y))):
      if all(relation(obj, other) for other in others):
        options.append((f"the {language.noun_phrase(obj, ('size', 'colour', 'shape'))} is the "
                        f"{word} of {language.number_word(n)} objects.", frozenset((k,))))
  for _ in range(3):
    trio = sorted(int(k) for k in rng.choice(n, size=3, replace=False))
    options.append((f"a picture of {_a(objects[trio[0]])}, {_a(objects[trio[1]])} and "
                    f"{_a(objects[trio[2]])}.", frozenset(trio)))
  return [(text[0].upper() + text[1:], mentioned) for text, mentioned in options
          if len(text.split()) + 1 <= MAX_PIECES]


def captions(scene: Scene, rng: np.random.Generator, focus: int | None = None) -> list[str]:
  """Five distinct captions of ``scene``; three mention object ``focus`` if given."""
  options = _caption_options(scene, rng)
  order = [options[int(k)] for k in rng.permutation(len(options))]
  chosen: list[str] = []
  if focus is not None:
    chosen = [text for text, mentioned in order if focus in mentioned][:3]
  for text, _ in order:
    if len(chosen) == CAPTIONS_PER_IMAGE:
      break
    if text not in chosen:
      chosen.append(text)
  return chosen


def hard_negative_pool(images: Sequence[PoolImage]) -> dict[str, Any]:
  """``{train_image_list, train_hard_pool}`` from the images' mean region features."""
  features = np.stack([image.mean_feature for image in images]).astype(np.float64)
  squared = (features ** 2).sum(axis=1)
  distances = squared[:, None] + squared[None, :] - 2 * features @ features.T
  np.fill_diagonal(distances, -1.0)  # the image itself comes first
  pool = np.argsort(distances, axis=1, kind="stable")[:, :min(POOL_SIZE, len(images))]
  return {"train_image_list": [image.image_id for image in images],
          "train_hard_pool": pool.astype(np.int64)}


def _record(image: PoolImage, sentences: list[str], dataset: str, split: str) -> dict[str, Any]:
  if dataset == "coco":
    part = "train" if split == "train" else "val"
    return {"sentences": sentences, "id": image.image_id,
            "img_path": f"COCO_{part}2014_{int(image.image_id):012d}.jpg"}
  return {"sentences": sentences, "id": str(image.image_id), "img_path": f"{image.image_id}.jpg"}


def image_captions(image: PoolImage, by_index: dict[int, PoolImage], config: GeneratorConfig,
                   stream: int) -> list[str]:
  """The five captions of a pool image; both twins caption the changed object.

  Args:
    image: the image.
    by_index: the pool's images by index (to find the twin's change).
    config: the generator settings (seed).
    stream: a number separating this use's random choices from others'.
  """
  changed = image.change or (by_index[image.twin].change if image.twin is not None else None)
  rng = np.random.default_rng([config.seed, stream, image.index])
  return captions(image.scene, rng, changed[0] if changed else None)


def write_retrieval(datasets_dir: str, images: Sequence[PoolImage], config: GeneratorConfig,
                    task: str) -> dict[str, Any]:
  """Write the files of a retrieval task (its reader's dataset: coco or flickr30k); counts."""
  dataset = get_task(task).reader_dataset
  root = os.path.join(datasets_dir, DATAROOTS[task])
  by_index = {image.index: image for image in images}
  counts: dict[str, Any] = {}
  for split, name in (("train", TRAIN_FILE), ("val", VAL_FILE)):
    records = []
    for image in split_images(images, split):
      sentences = image_captions(image, by_index, config, 21 if dataset == "coco" else 22)
      records.append(_record(image, sentences, dataset, split))
    layout.write_jsonl(os.path.join(root, name), records)
    counts[split] = {"images": len(records),
                     "captions": sum(len(r["sentences"]) for r in records)}
  pool = hard_negative_pool(split_images(images, "train"))
  # No training image is a test image, so the cleaned pool is the same pool.
  layout.write_pickle(os.path.join(root, "hard_negative.pkl"), pool)
  layout.write_pickle(os.path.join(root, "hard_negative_cleaned.pkl"), pool)
  counts["hard_pool_size"] = int(pool["train_hard_pool"].shape[1])
  return counts
