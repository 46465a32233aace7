"""RefCOCO, RefCOCO+ and RefCOCOg-style referring expressions, with their GT-box LMDBs.

The three differ as the real ones do:

* RefCOCO: short expressions that may use position words ("red circle",
  "the circle on the left");
* RefCOCO+: appearance only, no position words ("large red circle");
* RefCOCOg: longer sentences that may relate the object to another one
  ("the circle to the left of the blue star").

An expression always fits its object and no other; when the scene holds
look-alikes it must use the attribute (or position) words that tell them
apart. RefCOCO and RefCOCO+ share their images (even twin pairs of the COCO
pool), RefCOCOg uses the odd ones, as the real RefCOCOg has its own images.

Files, in ``refcoco/<dataset>/`` (read by ``annotations.refer``):
``refs(unc).p`` / ``refs(umd).p`` (a pickled list of refs) and
``instances.json`` (COCO-style images, annotations, categories); the LMDBs
of the detected regions and of the annotation boxes (``*_gt_*``) go in
``refcoco/<dataset>_<splitBy>/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from twelve_in_one.data.generate import layout, language
from twelve_in_one.data.generate.layout import DATAROOTS, FEATURES, GeneratorConfig
from twelve_in_one.data.generate.pools import PoolImage, gt_record, write_lmdb
from twelve_in_one.data.generate.scenes import SHAPES
from twelve_in_one.tasks.registry import get_task

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
REFS_PER_IMAGE = 3
SENTENCES_PER_REF = 2
MAX_PIECES = 20 - 2
_CODE = {"refcoco": 31, "refcoco+": 32, "refcocog": 33}
CATEGORY_ID = {shape: k + 1 for k, shape in enumerate(SHAPES)}


def annotation_id(image: PoolImage, index: int) -> int:
  """COCO-style annotation id of object ``index`` of a COCO-pool image."""
  return int(image.image_id) * 10 + index


def refer_images(coco: Sequence[PoolImage], dataset: str) -> list[PoolImage]:
  """The COCO-pool images a RefCOCO-family dataset uses."""
  parity = 1 if dataset == "refcocog" else 0
  return [image for image in coco if (image.index // 2) % 2 == parity]


def _ref_split(image: PoolImage, dataset: str, test_rank: int) -> str:
  if image.split != "test":
    return image.split
  if SPLIT_BY[dataset] == "umd":
    return "test"
  # unc: the test images are split into testA and testB halves.
  return "testA" if test_rank % 2 == 0 else "testB"


def expressions(image: PoolImage, index: int, dataset: str,
                rng: np.random.Generator) -> list[str]:
  """Up to SENTENCES_PER_REF distinct expressions of object ``index`` in this style."""
  scene = image.scene
  if dataset == "refcoco":
    options = [d.text for d in language.descriptions(scene, index, spatial=True)]
    forms = ("{}", "the {}", "{}")
  elif dataset == "refcoco+":
    options = [d.text for d in language.descriptions(scene, index, spatial=False)]
    forms = ("{}", "the {}", "{} in the picture")
  else:
    found = language.descriptions(scene, index, spatial=True, relational=True)
    relational = [d.text for d in found if "relation" in d.attributes]
    options = relational or [d.text for d in found]
    forms = ("the {}", "{a}", "the {} in the picture")
  chosen: list[str] = []
  for k in rng.permutation(len(options)):
    phrase = options[int(k)]
    text = forms[int(rng.integers(len(forms)))].format(phrase, a=language.a(phrase))
    if len(text.split()) <= MAX_PIECES and text not in chosen:
      chosen.append(text)
    if len(chosen) == SENTENCES_PER_REF:
      break
  return chosen


def _bbox(image: PoolImage, index: int) -> list[float]:
  x1, y1, x2, y2 = image.scene.objects[index].box
  return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def write_refer(datasets_dir: str, coco: Sequence[PoolImage], config: GeneratorConfig,
                task: str) -> dict[str, Any]:
  """Write one RefCOCO-family task (refs, instances, GT LMDB); returns counts.

  The task's reader dataset (refcoco, refcoco+ or refcocog) is a folder of its dataroot. The
  detected-region LMDB is written with the pool (see ``release.py``).
  """
  dataset = get_task(task).reader_dataset
  images = refer_images(coco, dataset)
  data_dir = os.path.join(datasets_dir, DATAROOTS[task], dataset)
  refs: list[dict[str, Any]] = []
  annotations: list[dict[str, Any]] = []
  records_images: list[dict[str, Any]] = []
  counts: dict[str, int] = {}
  test_rank = 0
  for image in images:
    split = _ref_split(image, dataset, test_rank)
    test_rank += image.split == "test"
    records_images.append({"id": image.image_id, "file_name": f"{image.key}.png",
                           "width": image.scene.width, "height": image.scene.height})
    for k, obj in enumerate(image.scene.objects):
      x, y, w, h = _bbox(image, k)
      annotations.append({"id": annotation_id(image, k), "image_id": image.image_id,
                          "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0,
                          "category_id": CATEGORY_ID[obj.shape], "segmentation": []})
    rng = np.random.default_rng([config.seed, _CODE[dataset], image.index])
    targets = rng.permutation(len(image.scene.objects))[:REFS_PER_IMAGE]
    for k in sorted(int(t) for t in targets):
      texts = expressions(image, k, dataset, rng)
      if not texts:
        continue
      ref_id = len(refs) + 1
      sent_ids = [ref_id * 10 + s for s in range(len(texts))]
      refs.append({
          "ref_id": ref_id, "ann_id": annotation_id(image, k), "image_id": image.image_id,
          "split": split, "category_id": CATEGORY_ID[image.scene.objects[k].shape],
          "file_name": f"{image.key}_{annotation_id(image, k)}.png", "sent_ids": sent_ids,
          "sentences": [{"raw": text, "sent": text.lower(), "sent_id": sent_id,
                         "tokens": text.lower().split()}
                        for text, sent_id in zip(texts, sent_ids)]})
      counts[split] = counts.get(split, 0) + len(texts)
  layout.write_pickle(os.path.join(data_dir, f"refs({SPLIT_BY[dataset]}).p"), refs)
  layout.write_json(os.path.join(data_dir, "instances.json"), {
      "info": {"description": f"twelve_in_one generated {dataset}-style instances"},
      "images": records_images, "annotations": annotations,
      "categories": [{"id": cid, "name": shape, "supercategory": "shape"}
                     for shape, cid in CATEGORY_ID.items()]})
  # GT-box LMDB: every annotation of each image, in annotation-id order.
  gt_path = os.path.join(datasets_dir, FEATURES[task][1])
  write_lmdb(gt_path, (gt_record(image, image.image_id, range(len(image.scene.objects)))
                       for image in images))
  return {"sentences": counts, "refs": len(refs), "images": len(images)}
