"""Example builders of the classification tasks: VQA, VG-QA, GQA, NLVR2, SNLI-VE.

As the official dataset classes build them:

* **VQA / VG-QA / GQA** (`vqa_dataset.py`, `visual_genome_dataset.py`, `gqa_dataset.py`): the
  question, one image's detected regions (global first, at most `max_region_num`), and a soft
  target over the answer vocabulary: zeros with the cached scores scattered at their labels
  (0.3/0.6/0.9/1 for VQA). Test splits have no answers and an all-zero target. VG-QA answers
  live in the VQA 3129-answer space (its own `cache/trainval_ans2label.pkl`).
* **SNLI-VE** (`visual_entailment_dataset.py`): the hypothesis (`sentence2`) only, the Flickr30k
  image, a one-hot 3-vector (contradiction 0, neutral 1, entailment 2); label "-" gives an
  all-zero target, as official.
* **NLVR2** (`nlvr2_dataset.py`): the statement and two images, a one-hot 2-vector with index 1
  = True. Official bug fixed here: the official class concatenates the two images' *unpadded*
  regions into 2 x max_region_num rows, so an image with fewer than max_region_num regions
  shifts the second image into the first half. We pad each image to max_region_num on its own,
  so rows [0, R) are always image 0 and [R, 2R) image 1.

Only the stored compact target is built here: sparse (labels, scores) for the soft targets,
dense one-hot otherwise; `common.assemble_target` densifies it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twelve_in_one.data.annotations.common import AnnotationSplit, build_soft_target
from twelve_in_one.data.annotations.genome import load_genome, load_genome_answer_vocab
from twelve_in_one.data.annotations.gqa import load_gqa, load_gqa_answer_vocab
from twelve_in_one.data.annotations.nlvr2 import load_nlvr2
from twelve_in_one.data.annotations.snli_ve import load_snli_ve
from twelve_in_one.data.annotations.vqa import load_vqa, load_vqa_answer_vocab
from twelve_in_one.data.examples.common import (
    Layout,
    SplitExamples,
    detected_block,
    text_records,
)
from twelve_in_one.data.examples.context import BuildContext, ImageTable

# Annotation format (`Task.reader`) -> (split loader, answer-vocabulary loader).
SOFT_TARGET_READERS = {
    "vqa": (load_vqa, load_vqa_answer_vocab),
    "genome": (load_genome, load_genome_answer_vocab),
    "gqa": (load_gqa, load_gqa_answer_vocab),
}


def _split(ctx: BuildContext, layout: Layout, split: str, entries: AnnotationSplit,
           texts: list[str], image_keys: list[list[Any]], ids: list[int], keys: list[str],
           targets: list[dict[str, np.ndarray]], where: list[str]) -> SplitExamples:
  """One record per entry (token ids, image indices, ids, target) and the image loader."""
  images = ImageTable(ctx.features(split=split))
  input_ids, input_mask = text_records(ctx.tokenizer, texts, layout.seq_len)
  records = []
  for row, (entry_keys, target) in enumerate(zip(image_keys, targets, strict=True)):
    image_index = [images.add(key, entries.source, where[row]) for key in entry_keys]
    records.append({"input_ids": input_ids[row], "input_mask": input_mask[row],
                    "image_index": np.asarray(image_index, np.int32),
                    "example_id": np.int64(ids[row]), "example_key": keys[row], **target})
  regions = layout.regions

  def load_image(index: int):
    return detected_block(images.read(index), regions)

  return SplitExamples(layout, split, records, images.keys, load_image, entries.skipped,
                       entries.source)


def build_soft_target_split(ctx: BuildContext, split: str) -> SplitExamples:
  """VQA, VG-QA or GQA: question + image + sparse soft target."""
  load, load_vocab = SOFT_TARGET_READERS[ctx.task.reader]
  vocab = load_vocab(ctx.dataroot)
  entries = load(ctx.dataroot, split, clean_image_ids=ctx.clean_ids(split), answer_vocab=vocab)
  layout = Layout.from_task(ctx.task, num_classes=vocab.num_labels)
  where = [f"question_id {entry['question_id']}" for entry in entries]
  targets = []
  for entry, place in zip(entries, where, strict=True):
    answer = entry.get("answer", {"labels": [], "scores": []})
    dense = build_soft_target(answer["labels"], answer["scores"], vocab.num_labels,
                              source=entries.source, where=place)
    labels = np.flatnonzero(dense).astype(np.int32)
    targets.append({"answer_labels": labels, "answer_scores": dense[labels]})

  return _split(ctx, layout, split, entries, [entry["question"] for entry in entries],
                [[entry["image_id"]] for entry in entries],
                [int(entry["question_id"]) for entry in entries],
                [str(entry["question_id"]) for entry in entries], targets, where)


def _one_hot(labels: list[int], num_classes: int) -> np.ndarray:
  target = np.zeros((num_classes,), np.float32)
  target[np.asarray(labels, np.int64)] = 1.0
  return target


def build_snli_ve_split(ctx: BuildContext, split: str) -> SplitExamples:
  """SNLI-VE: hypothesis + Flickr30k image + one-hot (or all-zero for "-") 3-vector."""
  entries = load_snli_ve(ctx.dataroot, split, clean_image_ids=ctx.clean_ids(split))
  layout = Layout.from_task(ctx.task)

  return _split(ctx, layout, split, entries, [entry["hypothesis"] for entry in entries],
                [[entry["image_id"]] for entry in entries],
                [entry["question_id"] for entry in entries],
                [str(entry["question_id"]) for entry in entries],
                [{"target": _one_hot(entry["answer"]["labels"], layout.num_classes)}
                 for entry in entries],
                [f"example {entry['question_id']} (Flickr30k id {entry['image_id']})"
                 for entry in entries])


def build_nlvr2_split(ctx: BuildContext, split: str) -> SplitExamples:
  """NLVR2: statement + two images (each padded to max_region_num) + one-hot 2-vector."""
  entries = load_nlvr2(ctx.dataroot, split)
  layout = Layout.from_task(ctx.task)

  return _split(ctx, layout, split, entries, [entry["sentence"] for entry in entries],
                [[entry["image_id_0"], entry["image_id_1"]] for entry in entries],
                [entry["question_id"] for entry in entries],
                [str(entry["identifier"]) for entry in entries],
                [{"target": _one_hot(entry["answer"]["labels"], layout.num_classes)}
                 for entry in entries],
                [f"identifier {entry['identifier']!r}" for entry in entries])
