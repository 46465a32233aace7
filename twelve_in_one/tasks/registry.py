"""The Task registry: one declarative entry per task, as plain data (MT:vilbert_tasks.yml).

Everything that differs between tasks is a field here, and every other part of the project
derives its per-task behaviour from these entries: the config's task settings, the example
builders (`Task.reader`), the generator's paths, the evaluation tables (server files, answer
vocabularies, the paper's numbers) and the answer heads' sizes (`HeadSpec.answer_head`). The
module imports nothing but the standard library, so configs and data code read it freely; the
head types' loss and score functions, which need jax, live in `head_types.py`.

Task ids are the official ones (`TASKn` -> n), so the task tokens of the released multi-task
checkpoint line up with ours. A further task is one `register_task(Task(...))` (or, for a
limited scope, `with registered_task(...)`) plus its annotation reader
(`twelve_in_one.data.examples.register_reader`) and, for the generated release, its
generator part (`twelve_in_one.data.generate.parts.register_part`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Generic, Iterable, Iterator, Mapping, TypeVar

# How a head type's targets are stored and assembled by the data pipeline.
TARGET_KINDS = ("classifier", "onehot", "retrieval", "grounding", "pointing")
PROCESSES = ("normal", "retrieval", "nlvr")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """A head type as data: the model output it reads, its target's form and its metric.

  The loss and score functions of each head type are in `head_types.py` (they need jax).
  """
  name: str
  output: str            # the one model output the task's step computes
  target: str            # one of TARGET_KINDS
  metric: str            # what the per-example score measures
  num_classes: int = 0   # onehot: the fixed number of classes
  answer_head: str = ""  # classifier: the model-config field the answer vocabulary sizes


HEAD_SPECS: dict[str, HeadSpec] = {spec.name: spec for spec in (
    HeadSpec("VL-classifier", "vil_prediction", "classifier", "soft accuracy",
             answer_head="num_vqa_answers"),
    HeadSpec("VL-classifier-GQA", "vil_prediction_gqa", "classifier", "accuracy",
             answer_head="num_gqa_answers"),
    HeadSpec("VL-logit", "vil_logit", "retrieval", "4-way accuracy"),
    HeadSpec("V-logit", "vision_logit", "grounding", "accuracy (IoU > 0.5)"),
    HeadSpec("V-logit-mc", "vision_logit", "pointing", "pointing accuracy"),
    HeadSpec("VL-binary-classifier", "vil_binary_prediction", "onehot", "accuracy",
             num_classes=2),
    HeadSpec("VL-tri-classifier", "vil_tri_prediction", "onehot", "accuracy", num_classes=3),
)}


@dataclasses.dataclass(frozen=True)
class PaperResult:
  """The paper's numbers of one task (Lu et al., CVPR 2020, Table 2), in percent.

  Copied from the project's research notes with their provenance tags, because most were
  recalled rather than re-read from the paper: `3p` confirmed by a secondary source (a
  Papers-with-Code mirror), `R` recalled, not re-read. Columns: ST = the single-task model, AT =
  the one multi-task model (the fair bar for this port), AT_FT = the multi-task model
  fine-tuned on the task.
  """
  metric: str
  split: str            # the paper's split
  our_split: str        # the prepared split that corresponds to it
  st: tuple[float, str]
  at: tuple[float, str]
  at_ft: tuple[float, str]
  note: str = ""


_SERVER = "test-dev is scored by the evaluation server"
_REFER_SPLIT = "the paper's one 'test' number; its exact split is not confirmed"


@dataclasses.dataclass(frozen=True)
class Task:
  """One task: dataset, head, shapes, optimisation settings and evaluation properties.

  `max_seq_length` is the official value *without* the task token; the model sees one more
  text position when task tokens are on. `batch_size` is the global batch (examples per
  optimizer step, over all devices). `lr` is the task's learning rate in the official table;
  the loss is scaled by `lr / min(lr of the run's tasks)` (see `loss_scale`).
  """
  name: str                    # our key, usable in config overrides (no '+')
  task_id: int                 # official TASKn number, the task-token row
  official_name: str           # the `name` field of vilbert_tasks.yml
  head_type: str               # key of HEAD_SPECS
  dataset: str                 # prepared-dataset name (part of the prepared data's shapes)
  max_seq_length: int
  max_region_num: int
  batch_size: int
  lr: float
  num_epochs: int
  train_split: str
  val_split: str
  eval_splits: tuple[str, ...]
  features: str                # region-feature LMDB, relative to the release's datasets/
  reader: str = ""             # annotation format: key of data.examples.BUILDERS
  reader_dataset: str = ""     # the dataset of a reader that serves several (coco, refcoco+)
  dataroot: str = ""           # annotation folder, relative to the release's datasets/
  gt_features: str | None = None
  # Splits whose detected-region LMDB is another file than `features` (VQA's test2015 images
  # are in a file of their own in the release), as (split, path) pairs.
  split_features: tuple[tuple[str, str], ...] = ()
  process: str = "normal"      # normal | retrieval (K options per example) | nlvr (2 images)
  num_options: int = 1         # retrieval: options per caption in training
  num_detected_regions: int = 101  # V-logit-mc: candidates are stored after these regions
  images_per_example: int = 1  # NLVR2: 2
  # V-logit-mc: candidate ids per example; 0 gives every ground-truth slot but the last, which
  # stays empty so that a padded list's pad id points at an empty region (GuessWhat).
  num_choices: int = 0
  # The "clean" filter: which test-id file (coco | genome | flickr) the official reader drops
  # from which of its splits; None when the reader has no such filter.
  clean_source: str | None = None
  clean_splits: tuple[str, ...] = ()
  server_format: str | None = None   # evaluation-server file format of its test split
  class_names: tuple[str, ...] = ()  # one-hot heads: what each class means, in class order
  paper: PaperResult | None = None   # the paper's numbers, when it reports the task

  def __post_init__(self) -> None:
    where = f"task {self.name!r}"
    if not self.name or "+" in self.name or "," in self.name:
      raise ValueError(f"{where}: name must be non-empty, without '+' or ','")
    if self.head_type not in HEAD_SPECS:
      raise ValueError(f"{where}: head_type {self.head_type!r}; expected one of "
                       f"{sorted(HEAD_SPECS)}")
    if self.process not in PROCESSES:
      raise ValueError(f"{where}: process {self.process!r}; expected one of {PROCESSES}")
    if self.num_choices and self.head_type != "V-logit-mc":
      raise ValueError(f"{where}: num_choices={self.num_choices} is only for V-logit-mc tasks")
    if self.num_choices < 0:
      raise ValueError(f"{where}: num_choices={self.num_choices}; expected >= 0")
    if self.paper is not None and self.paper.our_split not in self.eval_splits:
      raise ValueError(f"{where}: paper.our_split {self.paper.our_split!r} is not one of its "
                       f"eval_splits {self.eval_splits}")
    if self.class_names and len(self.class_names) != self.head_spec.num_classes:
      raise ValueError(f"{where}: {len(self.class_names)} class_names for head type "
                       f"{self.head_type!r}, which has {self.head_spec.num_classes} classes")
    for entry in self.split_features:
      if (not isinstance(entry, tuple) or len(entry) != 2
          or not all(isinstance(part, str) and part for part in entry)):
        raise ValueError(f"{where}: split_features entry {entry!r}; expected a (split, path) "
                         "pair of non-empty strings")
    if bool(self.clean_source) != bool(self.clean_splits):
      raise ValueError(f"{where}: clean_source and clean_splits go together")

  @property
  def key(self) -> str:
    return f"TASK{self.task_id}"

  def features_for(self, split: str | None) -> str:
    """The detected-region LMDB of `split` (relative to the release's datasets/)."""
    return dict(self.split_features).get(split, self.features)

  def with_split_features(self, pairs: Iterable[str]) -> "Task":
    """This task reading each `SPLIT=LMDB` pair's features from that file."""
    chosen = dict(self.split_features)
    for pair in pairs:
      split, _, path = pair.partition("=")
      if not split or not path:
        raise ValueError(f"split features {pair!r}: expected SPLIT=LMDB, e.g. "
                         "test=coco/features_100/COCO_test_resnext152_faster_rcnn_genome.lmdb")
      chosen[split] = path
    return dataclasses.replace(self, split_features=tuple(chosen.items()))

  @property
  def head_spec(self) -> HeadSpec:
    return HEAD_SPECS[self.head_type]

  @property
  def head(self):
    """The head type with its loss and score functions (`head_types.HeadType`; imports jax)."""
    from twelve_in_one.tasks import head_types  # noqa: PLC0415 (jax only where a step is built)
    return head_types.get_head_type(self.head_type)

  @property
  def output(self) -> str:
    """The one model output this task's step computes."""
    return self.head_spec.output

  @property
  def metric(self) -> str:
    return self.head_spec.metric

  @property
  def num_candidates(self) -> int:
    """V-logit-mc: candidate ids per example (`multiple_choice_ids` length), else 0.

    `num_choices` when set (Visual7W's 4); otherwise `max_region_num - num_detected_regions
    - 1` (GuessWhat: 204 with the release's 306 regions): its objects, then the pad id,
    which points at the always-empty last row.
    """
    if self.head_type != "V-logit-mc":
      return 0
    return self.num_choices or self.max_region_num - self.num_detected_regions - 1

  def model_text_length(self, task_tokens: bool = True) -> int:
    return self.max_seq_length + int(task_tokens)


_COCO = "coco/features_100/COCO_trainval_resnext152_faster_rcnn_genome.lmdb"
# COCO test2015 (VQA test-dev / test-std) images are in a feature file of their own.
_COCO_TEST = "coco/features_100/COCO_test_resnext152_faster_rcnn_genome.lmdb"
_FLICKR = "flickr30k/flickr30k_resnext152_faster_rcnn_genome.lmdb"
_GENOME = "visual_genome/vg_resnext152_faster_rcnn_genome.lmdb"


def _refer(dataset: str, split_by: str) -> dict[str, str]:
  folder = f"refcoco/{dataset}_{split_by}/{dataset}"
  return dict(features=f"{folder}_resnext152_faster_rcnn_genome.lmdb",
              gt_features=f"{folder}_gt_resnext152_faster_rcnn_genome.lmdb",
              reader="refer", reader_dataset=dataset, dataroot="refcoco",
              clean_source="coco", clean_splits=("train",))


_BUILT_IN: tuple[Task, ...] = (
    Task("vqa", 1, "VQA", "VL-classifier", "vqa", 23, 101, 128, 4e-5, 20,
         "trainval", "minval", ("minval", "test"), _COCO, split_features=(("test", _COCO_TEST),),
         reader="vqa", dataroot="VQA",
         clean_source="coco", clean_splits=("train", "trainval"), server_format="vqa",
         paper=PaperResult("VQA accuracy", "test-dev", "test", (71.82, "R"), (72.57, "R"),
                           (73.15, "3p"), _SERVER)),
    Task("genome_qa", 2, "GenomeQA", "VL-classifier", "genome_qa", 26, 101, 128, 4e-5, 20,
         "train", "val", ("val",), _GENOME, reader="genome", dataroot="visual_genome",
         clean_source="genome", clean_splits=("train", "val"),
         paper=PaperResult("accuracy", "val", "val", (34.38, "R"), (36.36, "R"), (36.64, "R"))),
    Task("visual7w", 4, "Visual7w", "V-logit-mc", "visual7w", 20, 200, 256, 2e-5, 20,
         "train", "val", ("val", "test"), "visual7w/visual7w_resnext152_faster_rcnn_genome.lmdb",
         gt_features="visual7w/visual7w_gt_resnext152_faster_rcnn_genome.lmdb",
         reader="visual7w", dataroot="visual7w", num_choices=4,   # the answer box and 3 others
         clean_source="genome", clean_splits=("train",),
         paper=PaperResult("pointing accuracy", "test", "test", (80.51, "R"), (82.75, "R"),
                           (83.35, "R"))),
    Task("retrieval_coco", 7, "RetrievalCOCO", "VL-logit", "retrieval_coco", 30, 101, 128,
         2e-5, 20, "train", "val", ("test",), _COCO, process="retrieval", num_options=4,
         reader="retrieval", reader_dataset="coco", dataroot="cocoRetreival",
         clean_source="coco", clean_splits=("train",),
         paper=PaperResult("image retrieval R@1", "test (1k images)", "test", (65.28, "R"),
                           (63.70, "R"), (68.00, "R"))),
    Task("retrieval_flickr30k", 8, "RetrievalFlickr30k", "VL-logit", "retrieval_flickr30k",
         30, 101, 128, 2e-5, 20, "train", "val", ("test",), _FLICKR, process="retrieval",
         num_options=4, reader="retrieval", reader_dataset="flickr30k", dataroot="flickr30k",
         clean_source="flickr", clean_splits=("train",),
         paper=PaperResult("image retrieval R@1", "test (1k images)", "test", (61.14, "R"),
                           (63.52, "R"), (67.90, "3p"))),
    Task("refcoco", 9, "refcoco", "V-logit", "refcoco", 20, 101, 256, 2e-5, 20, "train", "val",
         ("val", "testA", "testB"), **_refer("refcoco", "unc"),
         paper=PaperResult("accuracy (IoU > 0.5)", "test", "testA", (78.63, "R"), (80.58, "R"),
                           (81.20, "R"), _REFER_SPLIT)),
    Task("refcoco_plus", 10, "refcoco+", "V-logit", "refcoco_plus", 20, 101, 256, 2e-5, 20,
         "train", "val", ("val", "testA", "testB"), **_refer("refcoco+", "unc"),
         paper=PaperResult("accuracy (IoU > 0.5)", "test", "testA", (71.11, "R"), (73.25, "R"),
                           (74.22, "R"), _REFER_SPLIT)),
    Task("refcocog", 11, "refcocog", "V-logit", "refcocog", 20, 101, 256, 2e-5, 20, "train",
         "val", ("val", "test"), **_refer("refcocog", "umd"),
         paper=PaperResult("accuracy (IoU > 0.5)", "test", "test", (72.24, "R"), (75.96, "R"),
                           (76.35, "3p"))),
    Task("nlvr2", 12, "NLVR2", "VL-binary-classifier", "nlvr2", 40, 101, 64, 2e-5, 20, "train",
         "dev", ("dev", "test"), "nlvr2/nlvr2_resnext152_faster_rcnn_genome.lmdb",
         process="nlvr", images_per_example=2, reader="nlvr2", dataroot="nlvr2",
         class_names=("False", "True"),
         paper=PaperResult("accuracy", "test-P", "test", (74.25, "R"), (78.44, "R"),
                           (78.87, "3p"))),
    Task("snli_ve", 13, "VisualEntailment", "VL-tri-classifier", "snli_ve", 56, 101, 256, 2e-5,
         20, "train", "dev", ("dev", "test"), _FLICKR, reader="snli_ve",
         dataroot="visual_entailment", clean_source="flickr", clean_splits=("train",),
         class_names=("contradiction", "neutral", "entailment"),
         paper=PaperResult("accuracy", "test", "test", (76.72, "R"), (76.78, "R"),
                           (76.95, "3p"))),
    Task("gqa", 15, "GQA", "VL-classifier-GQA", "gqa", 26, 101, 128, 4e-5, 20, "trainval",
         "minval", ("minval", "test"), "gqa/gqa_resnext152_faster_rcnn_genome.lmdb",
         reader="gqa", dataroot="gqa", clean_source="genome",
         clean_splits=("train", "trainval"), server_format="gqa",
         paper=PaperResult("accuracy", "test-dev", "test", (58.19, "R"), (60.12, "R"),
                           (60.65, "R"), _SERVER)),
    Task("guesswhat_pointing", 17, "GuessWhatPointing", "V-logit-mc", "guesswhat_pointing",
         256, 306, 64, 2e-5, 20, "train", "valid", ("valid", "test"), _COCO,
         gt_features="guesswhat/guesswhat_gt_resnext152_faster_rcnn_genome.lmdb",
         reader="guesswhat", dataroot="guesswhat", clean_source="coco",
         clean_splits=("train",),
         paper=PaperResult("pointing accuracy", "test", "test", (62.81, "R"), (65.04, "R"),
                           (65.69, "R"))),
)

# The paper's twelve tasks in the README command's order (`--tasks 1-2-4-7-...-15-17`): the
# round-robin visits them in this order.
TWELVE_TASKS: tuple[str, ...] = tuple(task.name for task in _BUILT_IN)

# Every registered task by name: the twelve, then any added with `register_task`.
TASKS: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


def _aliases(task: Task) -> tuple[str, ...]:
  return tuple(dict.fromkeys(a.lower() for a in (task.name, task.official_name, task.key)))


def register_task(task: Task) -> Task:
  """Adds `task` to the registry (and so to configs, data building and evaluation).

  Its name, official name and `TASKn` key must be new, as must its task id (its task-token
  row). Returns the task.

  Raises:
    ValueError: a clash with a registered task, named.
  """
  if not isinstance(task, Task):
    raise TypeError(f"register_task expects a Task, got {type(task).__name__}")
  for other in TASKS.values():
    if other.task_id == task.task_id:
      raise ValueError(f"task {task.name!r}: task id {task.task_id} is already task "
                       f"{other.name!r}'s")
  for alias in _aliases(task):
    if alias in _ALIASES:
      raise ValueError(f"task {task.name!r}: {alias!r} already names task "
                       f"{_ALIASES[alias]!r}")
  TASKS[task.name] = task
  for alias in _aliases(task):
    _ALIASES[alias] = task.name
  return task


def unregister_task(name: str) -> Task:
  """Removes a task added with `register_task`; the built-in twelve stay."""
  task = get_task(name)
  if task.name in TWELVE_TASKS:
    raise ValueError(f"task {task.name!r} is one of the built-in twelve; it cannot be removed")
  del TASKS[task.name]
  for alias in _aliases(task):
    _ALIASES.pop(alias, None)
  return task


@contextlib.contextmanager
def registered_task(task: Task) -> Iterator[Task]:
  """`register_task` for the duration of a `with` block (a plug-in's tests, a one-off run)."""
  added = register_task(task)
  try:
    yield added
  finally:
    unregister_task(added.name)


for _task in _BUILT_IN:
  register_task(_task)
del _task


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


Value = TypeVar("Value")


class TaskTable(Mapping[str, Value], Generic[Value]):
  """A read-only table `task name -> value(task)`, read from the registry on every access.

  So a table built at import time also holds tasks registered later. Tasks whose value is
  None are not in the table.
  """

  def __init__(self, value: Callable[[Task], Value | None]) -> None:
    self._value = value

  def __getitem__(self, name: str) -> Value:
    task = TASKS.get(name)
    value = None if task is None else self._value(task)
    if value is None:
      raise KeyError(name)
    return value

  def __iter__(self) -> Iterator[str]:
    return iter([name for name, task in TASKS.items() if self._value(task) is not None])

  def __len__(self) -> int:
    return sum(1 for _ in self)

  def __repr__(self) -> str:
    return f"TaskTable({dict(self)!r})"


def loss_scale(task: Task, run_tasks: Iterable[Task]) -> float:
  """The reference's `task lr / min(task lr)` over the tasks trained together."""
  return task.lr / min(t.lr for t in run_tasks)


def task_by_id(task_id: int) -> Task:
  for task in TASKS.values():
    if task.task_id == task_id:
      return task
  raise ValueError(f"no task with official id {task_id}; known ids "
                   f"{sorted(t.task_id for t in TASKS.values())}")
