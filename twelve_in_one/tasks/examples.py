"""Random task batches of the right structure, for smoke runs, tests and benchmarks.

The values are random but valid for the task's head: soft VQA targets, one-hot labels, IoU-like
region targets, candidate ids inside the candidate block, padded text and regions. Real batches
come from the data pipeline; these exist to exercise shapes, compilation and speed.
"""

from __future__ import annotations

import numpy as np

from twelve_in_one.tasks.registry import Task


def random_batch(task: Task, batch_size: int, *, seed: int = 0, vocab_size: int = 30522,
                 feature_size: int = 2048, seq_len: int | None = None,
                 num_regions: int | None = None, num_vqa_answers: int = 3129,
                 num_gqa_answers: int = 1533) -> dict[str, np.ndarray]:
  """A host batch in the task's layout (see `process.py`), with official shapes by default.

  `seq_len` and `num_regions` default to the task's `max_seq_length` / `max_region_num`.
  """
  rng = np.random.default_rng(seed)
  seq_len = seq_len or task.max_seq_length
  num_regions = num_regions or task.max_region_num
  lead: tuple[int, ...] = (batch_size,)
  if task.process == "retrieval":
    lead = (batch_size, task.num_options)
  regions = num_regions * task.images_per_example

  lengths = rng.integers(3, seq_len + 1, size=lead)
  positions = np.arange(seq_len)
  input_mask = (positions < lengths[..., None]).astype(np.int32)
  input_ids = rng.integers(min(1000, vocab_size // 2), vocab_size,
                           size=lead + (seq_len,)).astype(np.int32)
  input_ids[..., 0] = 101  # [CLS]
  np.put_along_axis(input_ids, (lengths - 1)[..., None], 102, axis=-1)  # [SEP]
  input_ids *= input_mask

  real_regions = rng.integers(max(2, regions // 2), regions + 1, size=lead)
  image_mask = (np.arange(regions) < real_regions[..., None]).astype(np.int32)
  if task.process == "nlvr":   # the first image always fills its regions (see process.py)
    image_mask[..., :num_regions] = 1
  if task.head_spec.target == "pointing":  # candidate boxes are real regions
    image_mask[...] = 1
  image_feat = rng.random(lead + (regions, feature_size), dtype=np.float32)
  corner = rng.random(lead + (regions, 2), dtype=np.float32) * 0.5
  size = rng.random(lead + (regions, 2), dtype=np.float32) * 0.5
  image_loc = np.concatenate([corner, corner + size, (size[..., :1] * size[..., 1:])], -1)
  image_loc[..., 0, :] = [0, 0, 1, 1, 1]   # the global region
  image_feat *= image_mask[..., None]
  image_loc *= image_mask[..., None]

  batch = dict(input_ids=input_ids, input_mask=input_mask,
               segment_ids=np.zeros_like(input_ids), image_feat=image_feat,
               image_loc=image_loc.astype(np.float32), image_mask=image_mask)
  batch.update(_random_targets(task, batch_size, num_regions, rng, num_vqa_answers,
                               num_gqa_answers, image_mask))
  return batch


def _random_targets(task: Task, batch_size: int, num_regions: int, rng: np.random.Generator,
                    num_vqa_answers: int, num_gqa_answers: int,
                    image_mask: np.ndarray) -> dict[str, np.ndarray]:
  spec = task.head_spec
  kind = spec.target
  if kind == "classifier":
    classes = {"num_vqa_answers": num_vqa_answers,
               "num_gqa_answers": num_gqa_answers}[spec.answer_head]
    target = np.zeros((batch_size, classes), np.float32)
    for row in range(batch_size):
      answers = rng.choice(classes, size=3, replace=False)
      target[row, answers] = rng.choice([0.3, 0.6, 0.9, 1.0], size=3)
    return {"target": target}
  if kind == "retrieval":
    return {"target": np.zeros((batch_size,), np.int32)}
  if kind == "onehot":
    classes = spec.num_classes
    return {"target": np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch_size)]}
  if kind == "grounding":
    iou = rng.random((batch_size, num_regions, 1), dtype=np.float32)
    iou = np.where(iou >= 0.5, iou, 0.0) * image_mask[..., None]
    return {"target": iou.astype(np.float32)}
  if kind == "pointing":
    num_candidates = task.num_candidates
    gt_boxes = num_regions - task.num_detected_regions
    if gt_boxes < num_candidates:
      raise ValueError(f"task {task.name}: {num_regions} regions leave {gt_boxes} candidate "
                       f"boxes after the {task.num_detected_regions} detected ones; need at "
                       f"least {num_candidates}")
    ids = np.sort(np.stack([rng.choice(gt_boxes, num_candidates, replace=False)
                            for _ in range(batch_size)]), axis=1).astype(np.int32)
    target = np.zeros((batch_size, num_candidates, 1), np.float32)
    target[np.arange(batch_size), rng.integers(0, num_candidates, batch_size), 0] = 1.0
    return {"multiple_choice_ids": ids, "target": target}
  raise ValueError(f"task {task.name}: no random targets for head type {task.head_type!r}")
