"""A 13th task is one registry entry, its reader and its generator part, and nothing else.

The task here, "object_count", asks how many shapes a picture holds (one or two, three or
four, five or six) over the COCO-like image pool; a three-way one-hot answer read by the
existing `VL-tri-classifier` head. The test declares its three pieces through the public
extension points (`registered_task`, `registered_reader`, `registered_part`), then runs the
unchanged code paths: generate the release, prepare the task, train the tiny model on it, and
evaluate it.
"""

import contextlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from twelve_in_one.data.errors import DataError, SkipReport
from twelve_in_one.data.examples import (BuildContext, Layout, Reader, SplitExamples,
                                         registered_reader)
from twelve_in_one.data.examples.common import detected_block, text_records
from twelve_in_one.data.examples.context import ImageTable
from twelve_in_one.data.generate import GeneratorConfig, generate, layout, parts
from twelve_in_one.data.generate.baselines import Features
from twelve_in_one.data.generate.pools import PoolImage, split_images
from twelve_in_one.tasks import registry

REPO = Path(__file__).resolve().parents[1]
NAME = "object_count"
SPLITS = ("train", "val", "test")
QUESTION = "how many shapes are in the picture?"
RELEASE = dict(seed=0, num_images=8, num_val_images=4, num_test_images=4, num_regions=6)

# 1. The registry entry.
TASK = registry.Task(
    NAME, 19, "ObjectCount", "VL-tri-classifier", NAME, 12, 101, 8, 2e-5, 1, "train", "val",
    ("val", "test"), "object_count/object_count_resnext152_faster_rcnn_genome.lmdb",
    reader="object_count_jsonl", dataroot="object_count",
    class_names=("one or two", "three or four", "five or six"))


def count_class(num_objects: int) -> int:
  """0: one or two shapes, 1: three or four, 2: five or six."""
  return (num_objects - 1) // 2


# 2. The reader: one JSON object per line and split, `{id, image_id, question, label}`.
def build_object_count_split(ctx: BuildContext, split: str) -> SplitExamples:
  source = os.fspath(ctx.dataroot / f"{split}.jsonl")
  with open(source, encoding="utf-8") as handle:
    entries = [json.loads(line) for line in handle]
  if not entries:
    raise DataError.at(source, f"split {split!r}", "is empty", "at least one question")
  task_layout = Layout.from_task(ctx.task)
  images = ImageTable(ctx.features())
  input_ids, input_mask = text_records(ctx.tokenizer, [e["question"] for e in entries],
                                       task_layout.seq_len)
  records = []
  for row, entry in enumerate(entries):
    image = images.add(entry["image_id"], source, f"id {entry['id']}")
    target = np.zeros((task_layout.num_classes,), np.float32)
    target[entry["label"]] = 1.0
    records.append({"input_ids": input_ids[row], "input_mask": input_mask[row],
                    "image_index": np.asarray([image], np.int32),
                    "example_id": np.int64(entry["id"]), "example_key": str(entry["id"]),
                    "target": target})
  return SplitExamples(task_layout, split, records, images.keys,
                       lambda index: detected_block(images.read(index), task_layout.regions),
                       SkipReport(), source)


# 3. The generator part: the labels come from the scenes of the COCO-like pool.
def write_object_count(datasets_dir: str, images: Sequence[PoolImage],
                       config: GeneratorConfig) -> dict[str, Any]:
  del config   # no random choice: one question per image
  root = os.path.join(datasets_dir, layout.DATAROOTS[NAME])
  counts = {}
  for split in SPLITS:
    counts[split] = layout.write_jsonl(os.path.join(root, f"{split}.jsonl"), (
        {"id": int(image.image_id), "image_id": image.image_id, "question": QUESTION,
         "label": count_class(len(image.scene.objects))}
        for image in split_images(images, split)))
  return counts


def object_count_baselines(task: str, datasets_dir: str, features: Features
                           ) -> dict[str, Any]:
  """The question never changes, so a blind guess is the majority class of train."""
  del features
  root = os.path.join(datasets_dir, layout.DATAROOTS[task])
  labels = {}
  for split in ("train", "val"):
    with open(os.path.join(root, f"{split}.jsonl"), encoding="utf-8") as handle:
      labels[split] = [json.loads(line)["label"] for line in handle]
  majority = max(set(labels["train"]), key=labels["train"].count)
  chance = float(np.mean([label == majority for label in labels["val"]]))
  return {"train_examples": len(labels["train"]), "val_examples": len(labels["val"]),
          "chance": chance, "text_only": chance, "random": 1 / 3}


PART = parts.GeneratorPart("coco", write_object_count, object_count_baselines, text_length=10)


@contextlib.contextmanager
def thirteenth_task():
  """The three declarations, undone on exit."""
  with registry.registered_task(TASK), \
      registered_reader(TASK.reader, Reader(build_object_count_split)), \
      parts.registered_part(NAME, PART):
    yield


def _config_module():
  spec = importlib.util.spec_from_file_location(
      "twelve_in_one_config", REPO / "configs" / "twelve_in_one.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def declared():
  with thirteenth_task():
    yield
  assert NAME not in registry.TASKS and NAME not in parts.PARTS


def test_the_config_derives_the_new_task_from_the_registry(declared):
  module = _config_module()
  single = module.get_config(f"single:{NAME}")
  assert single.tasks == NAME
  assert single.task_settings[NAME].to_dict() == dict(
      batch_size=8, lr=2e-5, max_seq_length=12, max_region_num=101, num_detected_regions=101,
      weight=1.0)
  assert module.TWELVE == registry.TWELVE_TASKS   # the paper's twelve stay the default run
  # The shapes of the generated data: the part's text length, the generator's boxes.
  assert parts.generated_task_settings(NAME, GeneratorConfig(num_regions=6)) == dict(
      max_seq_length=10, max_region_num=7, num_detected_regions=7)


def test_generate_prepare_train_and_evaluate(declared, tmp_path):
  from twelve_in_one.data.prepare import prepare
  from twelve_in_one.data.tfds_format import open_prepared
  from twelve_in_one.evaluate.run import evaluate
  from twelve_in_one.train.loop import train_and_evaluate

  release = tmp_path / "release"
  summary = generate(release, progress=lambda message: None, **RELEASE)
  entry = summary["tasks"][NAME]
  assert list(summary["tasks"])[-1] == NAME and len(summary["tasks"]) == 13
  assert entry["written"] == {"train": 8, "val": 4, "test": 4}
  assert entry["baselines"]["metric"] == "accuracy" and 0 < entry["baselines"]["chance"] <= 1
  assert (release / "datasets" / TASK.features / "data.mdb").is_file()

  config = _config_module().get_config("smoke")
  config.model.name = "tiny"
  config.model.vocab_size = 30522   # the data is tokenized with bert-base-uncased
  config.data.generate_if_missing = False
  config.data.release_dir = str(release)
  config.data.data_dir = str(tmp_path / "prepared")
  config.schedule.num_epochs = 1
  config.schedule.iterations_per_epoch = 2
  config.eval_during_training = False
  config.compilation_cache_dir = ""
  config.tasks = NAME
  config.task_settings[NAME] = dict(
      batch_size=8, lr=2e-5, weight=1.0,
      **parts.generated_task_settings(NAME, GeneratorConfig(num_regions=6)))

  from twelve_in_one.train.validate import resolve_tasks
  (task,) = resolve_tasks(config)
  prepared = prepare(task, release / "datasets", config.data.data_dir, progress=False,
                     log=lambda line: None)
  assert {split: info["examples"] for split, info in prepared.splits.items()} == {
      "train": 8, "val": 4, "test": 4}
  stored = open_prepared(task, config.data.data_dir)
  assert stored.layout.kind == "onehot" and stored.layout.num_classes == 3
  assert stored.layout.regions == 7 and stored.layout.seq_len == 10

  workdir = tmp_path / "work"
  result = train_and_evaluate(config, str(workdir), chance={NAME: entry["baselines"]["chance"]})
  assert result.iterations == 2 and result.compilations == {NAME: 1}
  table = json.loads((workdir / "results.json").read_text())
  assert table[NAME]["examples"] == 4 and 0.0 <= table[NAME]["score"] <= 1.0

  evaluated = evaluate(config, str(workdir), progress=False)
  scores = evaluated["tasks"][NAME]
  assert set(scores) == {"val", "test"}
  assert scores["val"]["examples"] == scores["test"]["examples"] == 4
  predictions = json.loads((workdir / "eval" / "predictions" / f"{NAME}_val.json").read_text())
  assert {p["prediction"] for p in predictions} <= set(TASK.class_names)
  assert sorted(p["id"] for p in predictions) == sorted(
      json.loads(line)["id"]
      for line in (release / "datasets" / "object_count" / "val.jsonl").read_text().splitlines())
  assert f"| {NAME} |" in evaluated["table"]
