"""Pointing datasets: Visual7W-style "which" questions and GuessWhat-style dialogues.

**Visual7W** (Visual Genome pool, images with at least four objects): a
question names one object uniquely ("Which is the red circle?", "Which
square is blue?"), and its four candidates are that object and three others,
look-alikes (same shape or colour) first, so the answer needs the attribute
words. ``dataset_v7w_pointing.json`` holds ``boxes`` and ``images[].qa_pairs``;
the GT LMDB (keys ``v7w_<image_id>``) holds each image's candidate boxes
sorted by box id, the order the reader's ``mc_idx`` indexes.

**GuessWhat** (COCO pool): a game picks a target object; the questioner asks
yes/no questions about colour, shape, size and position, each splitting the
objects still possible, and the oracle answers truthfully until one object
is left. The model sees the dialogue and must point at the target among all
objects of the image. Files: ``guesswhat.{train,valid,test}.jsonl``,
``cache/image_bbox_list.pkl``, ``cache/bboxes_dict.pkl`` and the GT LMDB
(objects sorted by object id, keyed by image id).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from twelve_in_one.data.generate import layout, language
from twelve_in_one.data.generate.layout import DATAROOTS, FEATURES, GeneratorConfig
from twelve_in_one.data.generate.pools import PoolImage, gt_record, write_lmdb
from twelve_in_one.data.generate.scenes import SHAPES, Scene, SceneObject, level, side

# The Visual Genome pool has three times more validation images than the
# others (for VG-QA's fixed 5000 questions), so validation asks fewer.
V7W_QUESTIONS_PER_IMAGE = {"train": 4, "val": 1, "test": 2}
GUESSWHAT_GAMES_PER_IMAGE = 3
V7W_MAX_PIECES = 20 - 2
_V7W_SPLITS = {"train": "train", "val": "val", "test": "test"}
_GUESSWHAT_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def object_id(image: PoolImage, index: int) -> int:
  """Box / object id of object ``index`` of an image (unique over the pool)."""
  return int(image.image_id) * 10 + index


def _v7w_question(scene: Scene, index: int, rng: np.random.Generator) -> str | None:
  target = scene.objects[index]
  same_shape = [k for k, o in enumerate(scene.objects) if o.shape == target.shape]
  colours = [scene.objects[k].colour for k in same_shape]
  if len(same_shape) >= 2 and colours.count(target.colour) == 1 and rng.random() < 0.5:
    return f"Which {target.shape} is {target.colour}?"
  found = language.pick(rng, language.descriptions(scene, index, spatial=True))
  if found is None:
    return None
  form = ("Which is the {}?", "Which object is the {}?")[int(rng.integers(2))]
  return form.format(found.text)


def _distractors(scene: Scene, index: int, rng: np.random.Generator) -> list[int]:
  """Three other objects, look-alikes (shared shape or colour) first."""
  target = scene.objects[index]
  others = [k for k in rng.permutation(len(scene.objects)).tolist() if k != index]
  others.sort(key=lambda k: -((scene.objects[k].shape == target.shape)
                              + (scene.objects[k].colour == target.colour)))
  return others[:3]


def write_visual7w(datasets_dir: str, genome: Sequence[PoolImage], config: GeneratorConfig
                   ) -> dict[str, Any]:
  """Write ``dataset_v7w_pointing.json`` and the GT LMDB; returns counts."""
  boxes: list[dict[str, Any]] = []
  images_json: list[dict[str, Any]] = []
  gt_records: list[dict[str, Any]] = []
  counts: dict[str, int] = {}
  for image in genome:
    scene = image.scene
    if len(scene.objects) < 4:
      continue
    rng = np.random.default_rng([config.seed, 41, image.index])
    qa_pairs = []
    for k in rng.permutation(len(scene.objects))[:V7W_QUESTIONS_PER_IMAGE[image.split]].tolist():
      question = _v7w_question(scene, k, rng)
      if question is None or len(question.split()) + 1 > V7W_MAX_PIECES:
        continue
      qa_pairs.append({"qa_id": object_id(image, k) * 10 + len(qa_pairs),
                       "image_id": image.image_id, "question": question, "type": "which",
                       "answer": object_id(image, k),
                       "multiple_choices": [object_id(image, d)
                                            for d in _distractors(scene, k, rng)]})
    if not qa_pairs:
      continue
    split = _V7W_SPLITS[image.split]
    images_json.append({"image_id": image.image_id, "split": split,
                        "filename": f"v7w_{image.image_id}.png", "qa_pairs": qa_pairs})
    used = sorted({box for qa in qa_pairs for box in [qa["answer"], *qa["multiple_choices"]]})
    for box_id in used:
      x1, y1, x2, y2 = scene.objects[box_id % 10].box
      boxes.append({"box_id": box_id, "image_id": image.image_id, "x": round(x1, 2),
                    "y": round(y1, 2), "width": round(x2 - x1, 2), "height": round(y2 - y1, 2),
                    "name": scene.objects[box_id % 10].shape})
    # The reader's order: the image's candidate boxes sorted by box id.
    gt_records.append(gt_record(image, f"v7w_{image.image_id}", [b % 10 for b in used]))
    counts[split] = counts.get(split, 0) + len(qa_pairs)
  root = os.path.join(datasets_dir, DATAROOTS["visual7w"])
  layout.write_json(os.path.join(root, "dataset_v7w_pointing.json"),
                   {"boxes": boxes, "images": images_json})
  write_lmdb(os.path.join(datasets_dir, FEATURES["visual7w"][1]), gt_records)
  return {"questions": counts, "images": len(images_json)}


def _guesswhat_questions(scene: Scene) -> list[tuple[str, Callable[[SceneObject], bool | None]]]:
  """Yes/no questions about one object: (text, truth of an object; None = unanswerable)."""
  asks: list[tuple[str, Callable[[SceneObject], bool | None]]] = []
  for shape in sorted({o.shape for o in scene.objects}):
    asks.append((f"is it a {shape}?", lambda o, s=shape: o.shape == s))
  for colour in sorted({o.colour for o in scene.objects}):
    asks.append((f"is it {colour}?", lambda o, c=colour: o.colour == c))
  asks.append(("is it big?", lambda o: o.size == "large"))
  asks.append(("is it on the left?",
               lambda o: None if side(scene, o) is None else side(scene, o) == "left"))
  asks.append(("is it at the top?",
               lambda o: None if level(scene, o) is None else level(scene, o) == "top"))
  return asks


def dialogue(scene: Scene, target: int, rng: np.random.Generator
             ) -> list[tuple[str, str]] | None:
  """Questions and "Yes"/"No" answers until the target is the only object left.

  Returns None when no question can tell the target from a look-alike (a
  failed game, which the release leaves out as GuessWhat's does).
  """
  remaining = list(range(len(scene.objects)))
  asked: list[tuple[str, str]] = []
  asks = _guesswhat_questions(scene)
  while len(remaining) > 1:
    useful = []
    for text, truth in asks:
      values = [truth(scene.objects[k]) for k in remaining]
      # Ask only what the oracle can answer for every candidate, and what
      # rules at least one candidate out.
      if None not in values and any(values) and not all(values):
        useful.append((text, truth))
    if not useful:
      return None
    text, truth = useful[int(rng.integers(len(useful)))]
    answer = bool(truth(scene.objects[target]))
    asked.append((text, "Yes" if answer else "No"))
    remaining = [k for k in remaining if truth(scene.objects[k]) == answer]
  return asked


def write_guesswhat(datasets_dir: str, coco: Sequence[PoolImage], config: GeneratorConfig
                    ) -> dict[str, Any]:
  """Write the GuessWhat jsonl files, cache pickles and GT LMDB; returns counts."""
  root = os.path.join(datasets_dir, DATAROOTS["guesswhat_pointing"])
  games: dict[str, list[dict[str, Any]]] = {split: [] for split in _GUESSWHAT_SPLITS.values()}
  image_bbox_list: dict[int, dict[str, list[int]]] = {}
  bboxes: dict[int, list[float]] = {}
  for image in coco:
    scene = image.scene
    rng = np.random.default_rng([config.seed, 51, image.index])
    objects = []
    for k, obj in enumerate(scene.objects):
      x1, y1, x2, y2 = obj.box
      objects.append({"id": object_id(image, k), "category": obj.shape,
                      "category_id": SHAPES.index(obj.shape) + 1,
                      "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                      "area": round((x2 - x1) * (y2 - y1), 2), "segment": []})
      bboxes[object_id(image, k)] = [float(v) for v in obj.box]
    image_bbox_list[image.image_id] = {"bboxes": [o["id"] for o in objects]}
    split = _GUESSWHAT_SPLITS[image.split]
    for target in rng.permutation(len(scene.objects))[:GUESSWHAT_GAMES_PER_IMAGE].tolist():
      turns = dialogue(scene, target, rng)
      if turns is None:
        continue
      game_id = object_id(image, target)
      games[split].append({
          "id": game_id, "status": "success", "object_id": object_id(image, target),
          "image": {"id": image.image_id, "file_name": f"{image.key}.png",
                    "width": scene.width, "height": scene.height},
          "qas": [{"id": game_id * 100 + t, "question": q, "answer": a}
                  for t, (q, a) in enumerate(turns)],
          "objects": objects, "questioner_id": 0})
  for split, records in games.items():
    layout.write_jsonl(os.path.join(root, f"guesswhat.{split}.jsonl"), records)
  layout.write_pickle(os.path.join(root, "cache", "image_bbox_list.pkl"), image_bbox_list)
  layout.write_pickle(os.path.join(root, "cache", "bboxes_dict.pkl"), bboxes)
  write_lmdb(os.path.join(datasets_dir, FEATURES["guesswhat_pointing"][1]),
             (gt_record(image, image.image_id, range(len(image.scene.objects)))
              for image in coco))
  return {"games": {split: len(records) for split, records in games.items()}}
