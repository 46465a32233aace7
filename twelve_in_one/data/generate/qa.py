"""Writers of the three QA datasets in the release formats (VQA, VG-QA, GQA).

Files (readers in ``data/annotations``):

* ``VQA/``: ``v2_OpenEnded_mscoco_{train,val}2014_questions.json``,
  ``v2_OpenEnded_mscoco_test2015_questions.json``,
  ``cache/{train,val}_target.pkl`` and ``cache/trainval_{ans2label,label2ans}.pkl``.
* ``visual_genome/cache/``: ``trainval_target.pkl`` (the reader's val split
  is its last 5000 questions by id) and the VQA answer vocabulary.
* ``gqa/``: ``cache/{train,val,trainval}_target.pkl`` (minval = the last
  3000 of trainval), ``cache/trainval_{ans2label,label2ans}.pkl`` and
  ``testdev_balanced_questions.json``.

Every answer is a single label with soft score 1.0: the score the VQA
convention gives an answer all ten annotators agree on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from twelve_in_one.data.generate import layout, questions
from twelve_in_one.data.generate.balance import Candidate, balanced_sample
from twelve_in_one.data.generate.layout import (
    DATAROOTS,
    GENOME_VAL_SIZE,
    GQA_MINVAL_SIZE,
    GeneratorConfig,
)
from twelve_in_one.data.generate.pools import PoolImage, split_images
from twelve_in_one.data.generate.scenes import Scene

# Examples per image of each split.
VQA_PER_IMAGE = {"train": 5.0, "val": 2.5, "test": 2.0}
GENOME_PER_IMAGE = 12.0
GQA_PER_IMAGE = 12.0
GQA_TEST_PER_IMAGE = 2.0
_CODE = {"vqa": 11, "genome": 12, "gqa": 13}
# Word pieces a question may use: max_seq_length minus [CLS] and [SEP].
MAX_PIECES = {"vqa": 23 - 2, "genome": 26 - 2, "gqa": 26 - 2}


Enumerator = Callable[[Scene, np.random.Generator], questions.Candidates]


def _sample(images: Sequence[PoolImage], enumerate_fn: Enumerator, num: int,
            config: GeneratorConfig, dataset: str, split: str) -> tuple[list[Candidate], int]:
  """Balanced questions over ``images``: (chosen candidates, number of repeats)."""
  candidates = []
  for image in images:
    rng = np.random.default_rng([config.seed, _CODE[dataset], image.index])
    for kind, question, answer in enumerate_fn(image.scene, rng):
      if questions.word_pieces(question) <= MAX_PIECES[dataset]:
        candidates.append(Candidate(question, answer, kind, image))
  split_code = {"train": 1, "val": 2, "test": 3}[split]
  sample = balanced_sample(candidates, num,
                           np.random.default_rng([config.seed, _CODE[dataset], 0, split_code]))
  return sample.examples, sample.repeats


def _vocab(answers: Sequence[str]) -> tuple[dict[str, int], list[str]]:
  return {answer: label for label, answer in enumerate(answers)}, list(answers)


def _write_vocab(cache: str, answers: Sequence[str]) -> dict[str, int]:
  ans2label, label2ans = _vocab(answers)
  layout.write_pickle(os.path.join(cache, "trainval_ans2label.pkl"), ans2label)
  layout.write_pickle(os.path.join(cache, "trainval_label2ans.pkl"), label2ans)
  return ans2label


def _count(n: float, images: Sequence[PoolImage]) -> int:
  return max(2, int(round(n * len(images))))


# VQA's test questions are on COCO test2015 images, which have ids and a feature file of their
# own in the release; the generator gives the COCO pool's test scenes such ids.
TEST2015_ID_OFFSET = 500_000


def test2015_id(image: PoolImage) -> int:
  """The id (and feature key) of a COCO pool test scene as a VQA test2015 image."""
  return TEST2015_ID_OFFSET + int(image.image_id)


def write_vqa(datasets_dir: str, coco: Sequence[PoolImage], config: GeneratorConfig
              ) -> dict[str, Any]:
  """Write the VQA v2-style dataset over the COCO pool; returns counts."""
  root = os.path.join(datasets_dir, DATAROOTS["vqa"])
  ans2label = _write_vocab(os.path.join(root, "cache"), questions.VQA_ANSWERS)
  counts: dict[str, Any] = {}
  for split, part, year in (("train", "train", "2014"), ("val", "val", "2014"),
                            ("test", "test", "2015")):
    images = split_images(coco, split)
    chosen, repeats = _sample(images, questions.vqa_candidates,
                              _count(VQA_PER_IMAGE[split], images), config, "vqa", split)
    per_image: dict[int, int] = {}
    records, targets = [], []
    for candidate in chosen:
      image = candidate.payload
      image_id = test2015_id(image) if split == "test" else image.image_id
      # VQA numbers questions image_id * 1000 + k.
      question_id = int(image_id) * 1000 + per_image.setdefault(image_id, 0)
      per_image[image_id] += 1
      records.append({"image_id": image_id, "question": candidate.text,
                      "question_id": question_id})
      targets.append({"question_id": question_id, "image_id": image_id,
                      "labels": [ans2label[candidate.label]], "scores": [1.0]})
    records.sort(key=lambda record: record["question_id"])
    targets.sort(key=lambda target: target["question_id"])
    layout.write_json(os.path.join(root, f"v2_OpenEnded_mscoco_{part}{year}_questions.json"),
                     {"info": {"description": "twelve_in_one generated VQA-style questions"},
                      "task_type": "Open-Ended", "data_type": "mscoco",
                      "data_subtype": f"{part}{year}", "questions": records})
    if split != "test":
      layout.write_pickle(os.path.join(root, "cache", f"{split}_target.pkl"), targets)
    counts[split] = {"questions": len(records), "repeats": repeats}
  return counts


def write_genome(datasets_dir: str, genome: Sequence[PoolImage], config: GeneratorConfig
                 ) -> dict[str, Any]:
  """Write the VG-QA-style dataset over the Visual Genome pool; returns counts."""
  root = os.path.join(datasets_dir, DATAROOTS["genome_qa"])
  ans2label = _write_vocab(os.path.join(root, "cache"), questions.VQA_ANSWERS)
  train_images, val_images = split_images(genome, "train"), split_images(genome, "val")
  train, train_repeats = _sample(train_images, questions.genome_candidates,
                                 _count(GENOME_PER_IMAGE, train_images), config, "genome", "train")
  # The reader's val split is the last GENOME_VAL_SIZE questions by id.
  val, val_repeats = _sample(val_images, questions.genome_candidates, GENOME_VAL_SIZE, config,
                             "genome", "val")
  items = [{"question_id": question_id, "image_id": candidate.payload.image_id,
            "question": candidate.text, "labels": [ans2label[candidate.label]], "scores": [1.0]}
           for question_id, candidate in enumerate(train + val, start=1)]
  layout.write_pickle(os.path.join(root, "cache", "trainval_target.pkl"), items)
  return {"train": {"questions": len(train), "repeats": train_repeats},
          "val": {"questions": len(val), "repeats": val_repeats}}


def write_gqa(datasets_dir: str, genome: Sequence[PoolImage], config: GeneratorConfig
              ) -> dict[str, Any]:
  """Write the GQA-style dataset over the Visual Genome pool (string image ids)."""
  root = os.path.join(datasets_dir, DATAROOTS["gqa"])
  cache = os.path.join(root, "cache")
  ans2label = _write_vocab(cache, questions.GQA_ANSWERS)
  train_images, val_images = split_images(genome, "train"), split_images(genome, "val")
  train, train_repeats = _sample(train_images, questions.gqa_candidates,
                                 _count(GQA_PER_IMAGE, train_images), config, "gqa", "train")
  # The reader's minval split is the last GQA_MINVAL_SIZE of trainval by id.
  val, val_repeats = _sample(val_images, questions.gqa_candidates, GQA_MINVAL_SIZE, config,
                             "gqa", "val")

  def item(question_id: int, candidate: Candidate) -> dict[str, Any]:
    return {"question_id": question_id, "image_id": str(candidate.payload.image_id),
            "question": candidate.text, "labels": [ans2label[candidate.label]],
            "scores": [1.0]}

  train_items = [item(qid, c) for qid, c in enumerate(train, start=1)]
  val_items = [item(qid, c) for qid, c in enumerate(val, start=len(train) + 1)]
  layout.write_pickle(os.path.join(cache, "train_target.pkl"), train_items)
  layout.write_pickle(os.path.join(cache, "val_target.pkl"), val_items)
  layout.write_pickle(os.path.join(cache, "trainval_target.pkl"), train_items + val_items)
  test_images = split_images(genome, "test")
  test, _ = _sample(test_images, questions.gqa_candidates,
                    _count(GQA_TEST_PER_IMAGE, test_images), config, "gqa", "test")
  first_test_id = len(train) + len(val) + 1
  layout.write_json(os.path.join(root, "testdev_balanced_questions.json"), {
      str(qid): {"imageId": str(c.payload.image_id), "question": c.text, "answer": c.label,
                 "types": {"structural": c.kind}}
      for qid, c in enumerate(test, start=first_test_id)})
  return {"train": {"questions": len(train), "repeats": train_repeats},
          "minval": {"questions": len(val), "repeats": val_repeats},
          "test": {"questions": len(test)}}
