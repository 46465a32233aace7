"""Chance levels and blind baselines of a generated release, per task, on its val split.

Everything is read back from the release with the release readers, so the
numbers describe exactly what a trained model is scored on. Per task:

* ``chance``: what a guess without the example's image scores: the
  majority answer of the question's type for the QA tasks (the type is the
  first two words of the question, e.g. "what color", "how many"), 1/4 for
  the 4-way retrieval and Visual7W, one over the number of objects for
  referring expressions and GuessWhat, the majority label for NLVR2 and
  SNLI-VE. ``random`` (uniform guess) and ``majority`` (single most common
  answer) are reported too where they differ.
* ``text_only``: the majority answer of the exact text in train (QA,
  NLVR2, SNLI-VE), the mean target position of the exact expression in train
  (referring), the most common candidate slot (pointing), or the caption's
  unigram typicality (retrieval). Falls back to ``chance``'s guess for
  unseen texts.
* ``image_only``: the answers of the nearest training image (Euclidean
  distance between global region features, i.e. mean region features), the
  region most like an average training target (referring, pointing), or
  the image's typicality (retrieval).

A release whose tasks need both modalities keeps both baselines near
``chance`` (``tests/test_generate.py`` checks it).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from twelve_in_one.data import annotations as ann
from twelve_in_one.data.annotations.refer import SPLIT_BY_OF_DATASET
from twelve_in_one.data.features import FeatureLMDB
from twelve_in_one.data.generate.layout import DATAROOTS, FEATURES, TRAIN_SPLITS, VAL_SPLITS
from twelve_in_one.data.generate.detector import box_iou
from twelve_in_one.data.generate.caption_sets import TRAIN_FILE, VAL_FILE
from twelve_in_one.tasks.registry import get_task

# The question-answering formats (`Task.reader`): their chance level is the answer prior of
# the question's type, and their loaders.
_QA_LOADERS = {"vqa": ann.load_vqa, "genome": ann.load_genome, "gqa": ann.load_gqa}


class Features:
  """Mean features and boxes of images, read once per LMDB."""

  def __init__(self, datasets_dir: str) -> None:
    self._dir = datasets_dir
    self._readers: dict[str, FeatureLMDB] = {}

  def image(self, path: str, key: Any) -> Any:
    if path not in self._readers:
      self._readers[path] = FeatureLMDB(os.path.join(self._dir, path))
    return self._readers[path][key]

  def mean(self, path: str, key: Any) -> np.ndarray:
    return self.image(path, key).features[0].astype(np.float64)

  def close(self) -> None:
    """Close the LMDB environments (py-lmdb refuses to reopen a moved, open file)."""
    for reader in self._readers.values():
      reader.close()
    self._readers.clear()


# `(task name, datasets_dir, features) -> baselines` of one task (see the module docstring).
Baselines = Callable[[str, str, Features], dict[str, Any]]


def _majority(labels: Sequence[Hashable]) -> Hashable:
  counts = collections.Counter(labels)
  return max(counts, key=lambda label: (counts[label], repr(label)))


def _grouped_majority(keys: Sequence[Hashable], labels: Sequence[Hashable]) -> dict:
  groups: dict[Hashable, list[Hashable]] = collections.defaultdict(list)
  for key, label in zip(keys, labels, strict=True):
    groups[key].append(label)
  return {key: _majority(values) for key, values in groups.items()}


def _nearest(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
  distances = ((queries ** 2).sum(1)[:, None] + (references ** 2).sum(1)[None, :]
               - 2 * queries @ references.T)
  return np.argmin(distances, axis=1)


def question_type(text: str) -> str:
  """The question's type: its first two words (and whether it offers a choice)."""
  words = text.lower().rstrip("?.").split()
  return " ".join(words[:2]) + (" ... or" if " or " in text.lower() else "")


def _labelled(task: str, datasets_dir: str, features: Features
              ) -> dict[str, tuple[list[str], list[Any], list[Callable[[Any], float]], list[Any]]]:
  """Per split: texts, image keys, scoring functions and best labels of a classification task."""
  root = os.path.join(datasets_dir, DATAROOTS[task])
  reader = get_task(task).reader
  out = {}
  for split in (TRAIN_SPLITS[task], VAL_SPLITS[task]):
    if reader in _QA_LOADERS:
      entries = _QA_LOADERS[reader](root, split).entries
      texts = [e["question"] for e in entries]
      keys = [[e["image_id"]] for e in entries]
      soft = [dict(zip(e["answer"]["labels"], e["answer"]["scores"])) for e in entries]
    elif reader == "nlvr2":
      entries = ann.load_nlvr2(root, split).entries
      texts = [e["sentence"] for e in entries]
      keys = [[e["image_id_0"], e["image_id_1"]] for e in entries]
      soft = [{e["answer"]["labels"][0]: 1.0} for e in entries]
    elif reader == "snli_ve":
      entries = ann.load_snli_ve(root, split).entries
      texts = [e["hypothesis"] for e in entries]
      keys = [[e["image_id"]] for e in entries]
      soft = [dict(zip(e["answer"]["labels"], e["answer"]["scores"])) for e in entries]
    else:
      raise ValueError(f"task {task}: no classification baselines for its reader {reader!r}; "
                       f"expected one of {sorted(_QA_LOADERS) + ['nlvr2', 'snli_ve']}")
    best = [max(s, key=lambda label, s=s: (s[label], -label)) if s else None for s in soft]
    out[split] = (texts, keys, soft, best)
  return out


def classification_baselines(task: str, datasets_dir: str, features: Features
                             ) -> dict[str, Any]:
  """Baselines of the QA tasks, NLVR2 and SNLI-VE (score = soft target at the guess)."""
  splits = _labelled(task, datasets_dir, features)
  (train_texts, train_keys, _, train_best), (texts, keys, soft, _) = (
      splits[TRAIN_SPLITS[task]], splits[VAL_SPLITS[task]])
  score = lambda guesses: float(np.mean([s.get(g, 0.0) for s, g in zip(soft, guesses)]))
  majority = _majority(train_best)
  qa = get_task(task).reader in _QA_LOADERS
  types = _grouped_majority([question_type(t) for t in train_texts], train_best) if qa else {}
  prior = [types.get(question_type(t), majority) if qa else majority for t in texts]
  exact = _grouped_majority(train_texts, train_best)
  text_only = [exact.get(t, p) for t, p in zip(texts, prior)]
  path = FEATURES[task][0]
  image_of = lambda k: np.concatenate([features.mean(path, key) for key in k])
  train_images = sorted({tuple(k) for k in train_keys})
  answers_of = collections.defaultdict(list)
  for k, label in zip(train_keys, train_best):
    answers_of[tuple(k)].append(label)
  reference = np.stack([image_of(k) for k in train_images])
  val_images = sorted({tuple(k) for k in keys})
  nearest = dict(zip(val_images, _nearest(np.stack([image_of(k) for k in val_images]),
                                          reference)))
  image_only = [_majority(answers_of[train_images[nearest[tuple(k)]]]) for k in keys]
  labels = sorted({label for s in soft for label in s} | set(train_best), key=repr)
  result = {"train_examples": len(train_texts), "val_examples": len(texts),
            "majority": score([majority] * len(texts)), "text_only": score(text_only),
            "image_only": score(image_only), "random": 1.0 / max(1, len(labels))}
  result["chance"] = score(prior) if qa else result["majority"]
  if qa:
    result["type_prior"] = result["chance"]
  return result


def _unigram_scorer(captions: Sequence[str]) -> Callable[[str], float]:
  counts = collections.Counter(w for c in captions for w in c.lower().split())
  total = sum(counts.values())
  return lambda c: float(np.mean([np.log((counts[w] + 1) / (total + len(counts)))
                                  for w in c.lower().split()]))


def _tie_credit(scores: Sequence[float]) -> float:
  """Expected accuracy of argmax with random tie-breaking when option 0 is right."""
  best = max(scores)
  return (1.0 / sum(1 for s in scores if s == best)) if scores[0] == best else 0.0


def retrieval_baselines(task: str, datasets_dir: str, features: Features) -> dict[str, Any]:
  """4-way val (true, random caption, random image, random caption) blind baselines."""
  dataset = get_task(task).reader_dataset
  root = os.path.join(datasets_dir, DATAROOTS[task])
  train = ann.load_retrieval(os.path.join(root, TRAIN_FILE), dataset, "train")
  val = ann.load_retrieval(os.path.join(root, VAL_FILE), dataset, "val")
  path = FEATURES[task][0]
  text_score = _unigram_scorer([e["caption"] for e in train])
  centre = np.mean([features.mean(path, i) for i in train.image_ids], axis=0)
  image_score = {i: -float(np.linalg.norm(features.mean(path, i) - centre))
                 for i in val.image_ids}
  rng = np.random.default_rng(0)
  text_credit, image_credit = [], []
  for entry in val:
    others = [e for e in val.image_ids if e != entry["image_id"]]
    wrong = [val[int(rng.integers(len(val)))]["caption"] for _ in range(2)]
    other_image = others[int(rng.integers(len(others)))]
    captions = [entry["caption"], wrong[0], entry["caption"], wrong[1]]
    images = [entry["image_id"], entry["image_id"], other_image, entry["image_id"]]
    text_credit.append(_tie_credit([text_score(c) for c in captions]))
    image_credit.append(_tie_credit([image_score[i] for i in images]))
  return {"train_examples": len(train), "val_examples": len(val),
          "chance": 0.25, "random": 0.25, "text_only": float(np.mean(text_credit)),
          "image_only": float(np.mean(image_credit))}


def refer_baselines(task: str, datasets_dir: str, features: Features) -> dict[str, Any]:
  """Referring expressions: val on the detected regions (incl. the global one)."""
  dataset = get_task(task).reader_dataset
  split_by = SPLIT_BY_OF_DATASET[dataset]
  data_dir = os.path.join(datasets_dir, DATAROOTS[task], dataset)
  path, gt_path = FEATURES[task]

  def regions(entry: dict[str, Any]) -> tuple[Any, np.ndarray, np.ndarray]:
    image = features.image(path, entry["image_id"])
    boxes = image.boxes_pixels5[:, :4].astype(np.float64)
    hits = box_iou(boxes, np.asarray(entry["ref_box"])) > 0.5
    return image, boxes, hits

  train = ann.load_refer(data_dir, "train", split_by).entries
  val = ann.load_refer(data_dir, "val", split_by).entries
  target_features, centres = [], collections.defaultdict(list)
  for entry in train:
    image, boxes, _ = regions(entry)
    best = int(np.argmax(box_iou(boxes[1:], np.asarray(entry["ref_box"])))) + 1
    target_features.append(image.features[best].astype(np.float64))
    x1, y1, x2, y2 = entry["ref_box"]
    centres[entry["caption"]].append(((x1 + x2) / 2 / image.image_w, (y1 + y2) / 2 / image.image_h))
  typical = np.mean(target_features, axis=0)
  overall = np.mean([c for values in centres.values() for c in values], axis=0)
  random_region, random_object, text_hits, image_hits = [], [], [], []
  for entry in val:
    image, boxes, hits = regions(entry)
    random_region.append(hits.mean())
    random_object.append(1.0 / len(features.image(gt_path, entry["image_id"]).boxes_pixels5[1:]))
    centre = np.mean(centres.get(entry["caption"], [overall]), axis=0)
    box_centres = np.stack([(boxes[1:, 0] + boxes[1:, 2]) / 2 / image.image_w,
                            (boxes[1:, 1] + boxes[1:, 3]) / 2 / image.image_h], axis=1)
    text_hits.append(hits[1 + int(np.argmin(((box_centres - centre) ** 2).sum(1)))])
    distances = ((image.features[1:].astype(np.float64) - typical) ** 2).sum(1)
    image_hits.append(hits[1 + int(np.argmin(distances))])
  return {"train_examples": len(train), "val_examples": len(val),
          "chance": float(np.mean(random_object)), "random_object": float(np.mean(random_object)),
          "random": float(np.mean(random_region)), "text_only": float(np.mean(text_hits)),
          "image_only": float(np.mean(image_hits))}


def pointing_baselines(task: str, datasets_dir: str, features: Features) -> dict[str, Any]:
  """Visual7W and GuessWhat: pick one of the candidates (GT boxes)."""
  root = os.path.join(datasets_dir, DATAROOTS[task])
  gt_path = FEATURES[task][1]
  if get_task(task).reader == "visual7w":
    load = lambda split: ann.load_visual7w(root, split).entries
    key = lambda e: e["feature_key"]
    candidates = lambda e: [e["gt_box_ids"][k] for k in e["mc_idx"]]
  else:
    load = lambda split: ann.load_guesswhat(root, split).entries
    key = lambda e: e["image_id"]
    candidates = lambda e: e["candidate_object_ids"]

  def slot(entry: dict[str, Any]) -> int:
    return candidates(entry).index(entry["ref_id"])

  train, val = load(TRAIN_SPLITS[task]), load(VAL_SPLITS[task])
  prior = _majority([slot(e) for e in train])
  typical = np.mean([features.image(gt_path, key(e)).features[1 + e["mc_idx"][slot(e)]]
                     for e in train], axis=0)
  text_hits, image_hits, random = [], [], []
  for entry in val:
    rows = features.image(gt_path, key(entry)).features[1:][entry["mc_idx"]].astype(np.float64)
    random.append(1.0 / len(entry["mc_idx"]))
    text_hits.append(prior == slot(entry))
    image_hits.append(int(np.argmin(((rows - typical) ** 2).sum(1))) == slot(entry))
  return {"train_examples": len(train), "val_examples": len(val),
          "chance": float(np.mean(random)), "random": float(np.mean(random)),
          "text_only": float(np.mean(text_hits)), "image_only": float(np.mean(image_hits))}


def task_baselines(datasets_dir: str, tasks: Mapping[str, Baselines]
                   ) -> dict[str, dict[str, Any]]:
  """Chance levels and blind baselines of each task on its validation split.

  `tasks` maps each task name to its baselines function (`parts.GeneratorPart.baselines`).
  """
  features = Features(datasets_dir)
  results: dict[str, dict[str, Any]] = {}
  try:
    for task, baselines in tasks.items():
      found = baselines(task, datasets_dir, features)
      results[task] = {"metric": get_task(task).metric, "val_split": VAL_SPLITS[task],
                       **{name: value if isinstance(value, int) else round(float(value), 4)
                          for name, value in found.items()}}
  finally:
    features.close()
  return results
