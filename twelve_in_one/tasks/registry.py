"""The Task registry: one declarative entry per 12-in-1 task (spec §3, MT:vilbert_tasks.yml).

The model, the data pipeline and the trainer all read this table; none keeps its own list of
tasks. Adding a 13th task is one `Task(...)` entry here plus its annotation reader.

Task ids are the official ones (`TASKn` -> n), so the task tokens of the released multi-task
checkpoint line up with ours.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from twelve_in_one.tasks.heads import HeadType, get_head_type


@dataclasses.dataclass(frozen=True)
class Task:
  """One task: dataset, head, loss, metric, shapes and optimisation settings.

  `max_seq_length` is the official value *without* the task token; the model sees one more
  text position when task tokens are on. `batch_size` is the global batch (examples per
  optimizer step, over all devices). `lr` is the task's learning rate in the official table;
  the loss is scaled by `lr / min(lr of the run's tasks)` (see `loss_scale`).
  """
  name: str                    # our key, usable in config overrides (no '+')
  task_id: int                 # official TASKn number, the task-token row
  official_name: str           # the `name` field of vilbert_tasks.yml
  head_type: str               # key of heads.HEAD_TYPES
  dataset: str                 # annotation reader / prepared-dataset name
  max_seq_length: int
  max_region_num: int
  batch_size: int
  lr: float
  num_epochs: int
  train_split: str
  val_split: str
  eval_splits: tuple[str, ...]
  features: str                # region-feature LMDB, relative to the release's datasets/
  dataroot: str = ""           # annotation folder, relative to the release's datasets/
  gt_features: str | None = None
  process: str = "normal"      # normal | retrieval (K options per example) | nlvr (2 images)
  num_options: int = 1         # retrieval: options per caption in training
  num_detected_regions: int = 101  # V-logit-mc: candidates are stored after these regions
  images_per_example: int = 1  # NLVR2: 2

  @property
  def key(self) -> str:
    return f"TASK{self.task_id}"

  @property
  def head(self) -> HeadType:
    return get_head_type(self.head_type)

  @property
  def output(self) -> str:
    """The one model output this task's step computes."""
    return self.head.output

  @property
  def metric(self) -> str:
    return self.head.metric

  @property
  def num_candidates(self) -> int:
    """V-logit-mc: candidate ids per example (`multiple_choice_ids` length).

    Visual7W has 4 choices. GuessWhat gives every game `max_region_num - num_detected_regions
    - 1` ids (204 with the release's 306 regions): its objects, then the pad id, which points
    at the always-empty last row.
    """
    if self.head_type != "V-logit-mc":
      return 0
    if self.dataset == "visual7w":
      return 4
    return self.max_region_num - self.num_detected_regions - 1

  def model_text_length(self, task_tokens: bool = True) -> int:
    return self.max_seq_length + int(task_tokens)


_COCO = "coco/features_100/COCO_trainval_resnext152_faster_rcnn_genome.lmdb"
_FLICKR = "flickr30k/flickr30k_resnext152_faster_rcnn_genome.lmdb"

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("vqa", 1, "VQA", "VL-classifier", "vqa", 23, 101, 128, 4e-5, 20,
         "trainval", "minval", ("minval", "test"), _COCO,
         dataroot="VQA"),
    Task("genome_qa", 2, "GenomeQA", "VL-classifier", "genome_qa", 26, 101, 128, 4e-5, 20,
         "train", "val", ("val",), "visual_genome/vg_resnext152_faster_rcnn_genome.lmdb",
         dataroot="visual_genome"),
    Task("visual7w", 4, "Visual7w", "V-logit-mc", "visual7w", 20, 200, 256, 2e-5, 20,
         "train", "val", ("val", "test"), "visual7w/visual7w_resnext152_faster_rcnn_genome.lmdb",
         gt_features="visual7w/visual7w_gt_resnext152_faster_rcnn_genome.lmdb",
         dataroot="visual7w"),
    Task("retrieval_coco", 7, "RetrievalCOCO", "VL-logit", "retrieval_coco", 30, 101, 128,
         2e-5, 20, "train", "val", ("test",), _COCO, process="retrieval", num_options=4,
         dataroot="cocoRetreival"),
    Task("retrieval_flickr30k", 8, "RetrievalFlickr30k", "VL-logit", "retrieval_flickr30k",
         30, 101, 128, 2e-5, 20, "train", "val", ("test",), _FLICKR, process="retrieval",
         num_options=4,
         dataroot="flickr30k"),
    Task("refcoco", 9, "refcoco", "V-logit", "refcoco", 20, 101, 256, 2e-5, 20, "train", "val",
         ("val", "testA", "testB"), "refcoco/refcoco_unc/refcoco_resnext152_faster_rcnn_genome.lmdb",
         gt_features="refcoco/refcoco_unc/refcoco_gt_resnext152_faster_rcnn_genome.lmdb",
         dataroot="refcoco"),
    Task("refcoco_plus", 10, "refcoco+", "V-logit", "refcoco_plus", 20, 101, 256, 2e-5, 20,
         "train", "val", ("val", "testA", "testB"),
         "refcoco/refcoco+_unc/refcoco+_resnext152_faster_rcnn_genome.lmdb",
         gt_features="refcoco/refcoco+_unc/refcoco+_gt_resnext152_faster_rcnn_genome.lmdb",
         dataroot="refcoco"),
    Task("refcocog", 11, "refcocog", "V-logit", "refcocog", 20, 101, 256, 2e-5, 20, "train",
         "val", ("val", "test"),
         "refcoco/refcocog_umd/refcocog_resnext152_faster_rcnn_genome.lmdb",
         gt_features="refcoco/refcocog_umd/refcocog_gt_resnext152_faster_rcnn_genome.lmdb",
         dataroot="refcoco"),
    Task("nlvr2", 12, "NLVR2", "VL-binary-classifier", "nlvr2", 40, 101, 64, 2e-5, 20, "train",
         "dev", ("dev", "test"), "nlvr2/nlvr2_resnext152_faster_rcnn_genome.lmdb",
         process="nlvr", images_per_example=2,
         dataroot="nlvr2"),
    Task("snli_ve", 13, "VisualEntailment", "VL-tri-classifier", "snli_ve", 56, 101, 256, 2e-5,
         20, "train", "dev", ("dev", "test"), _FLICKR,
         dataroot="visual_entailment"),
    Task("gqa", 15, "GQA", "VL-classifier-GQA", "gqa", 26, 101, 128, 4e-5, 20, "trainval",
         "minval", ("minval", "test"), "gqa/gqa_resnext152_faster_rcnn_genome.lmdb",
         dataroot="gqa"),
    Task("guesswhat_pointing", 17, "GuessWhatPointing", "V-logit-mc", "guesswhat_pointing",
         256, 306, 64, 2e-5, 20, "train", "valid", ("valid", "test"), _COCO,
         gt_features="guesswhat/guesswhat_gt_resnext152_faster_rcnn_genome.lmdb",
         dataroot="guesswhat"),
)}

# The paper's twelve tasks in the README command's order (`--tasks 1-2-4-7-...-15-17`): the
# round-robin visits them in this order.
TWELVE_TASKS: tuple[str, ...] = tuple(TASKS)

_ALIASES: dict[str, str] = {}
for _task in TASKS.values():
  for _alias in (_task.name, _task.official_name, _task.key):
    _ALIASES[_alias.lower()] = _task.name


def get_task(name: str) -> Task:
  """Looks a task up by our name, its official name or its `TASKn` key (any case)."""
  key = _ALIASES.get(str(name).lower())
  if key is None:
    raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)} (or an official "
                     "name such as 'VQA' / 'refcoco+', or a key such as 'TASK1')")
  return TASKS[key]


def get_tasks(names: Iterable[str]) -> list[Task]:
  tasks = [get_task(n) for n in names]
  seen = set()
  for task in tasks:
    if task.name in seen:
      raise ValueError(f"task {task.name!r} is listed twice")
    seen.add(task.name)
  return tasks


def loss_scale(task: Task, run_tasks: Iterable[Task]) -> float:
  """The reference's `task lr / min(task lr)` over the tasks trained together."""
  return task.lr / min(t.lr for t in run_tasks)


def task_by_id(task_id: int) -> Task:
  for task in TASKS.values():
    if task.task_id == task_id:
      return task
  raise ValueError(f"no task with official id {task_id}; known ids "
                   f"{sorted(t.task_id for t in TASKS.values())}")
