"""Tests of the generated mini 12-in-1 release (``twelve_in_one.data.generate``).

* The same seed gives the same bytes, file by file.
* Every dataset's train and val (and test) splits load with the release
  readers, and every image they reference is in the task's feature LMDBs.
* Answers, expressions, labels and dialogues are true of the scene graph.
* Features are the documented extractor applied to the released pixels.
* No shortcut: text-only and image-only baselines stay within three
  standard errors (at least 0.04) of the chance level on each val split.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twelve_in_one.data import annotations as ann
from twelve_in_one.data.annotations.clean import load_test_image_ids
from twelve_in_one.data.annotations.gqa import load_gqa_answer_vocab
from twelve_in_one.data.annotations.retrieval import RETRIEVAL_FILES
from twelve_in_one.data.annotations.vqa import load_vqa_answer_vocab
from twelve_in_one.data.features import FeatureLMDB
from twelve_in_one.data.generate import GeneratorConfig, generate, layout, pools, read_summary
from twelve_in_one.data.generate import qa as qa_module
from twelve_in_one.data.generate.extractor import extract
from twelve_in_one.data.generate.detector import box_iou
from twelve_in_one.tasks.registry import get_task
from twelve_in_one.data.generate.scenes import COLOURS, RELATIONS, SHAPES, SIZES, Scene, level, side

TINY = dict(num_images=16, num_val_images=8, num_test_images=4, num_regions=8)
SMALL = dict(num_images=120, num_val_images=40, num_test_images=4, num_regions=10)
QUIET = dict(progress=lambda message: None)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
  out = tmp_path_factory.mktemp("tiny") / "release"
  generate(out, seed=0, **TINY, **QUIET)
  return out


@pytest.fixture(scope="session")
def small(tmp_path_factory) -> Path:
  out = tmp_path_factory.mktemp("small") / "release"
  generate(out, seed=3, **SMALL, **QUIET)
  return out


def _hashes(root: Path) -> dict[str, str]:
  return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
          for path in sorted(root.rglob("*")) if path.is_file()}


def _scenes(config: GeneratorConfig) -> dict[str, dict]:
  """image id (or NLVR2 key) -> scene, for every pool."""
  return {pool: {spec.image_id: spec.scene for spec in pools.scene_specs(pool, config)}
          for pool in pools.POOL_CODE}


# ---------------------------------------------------------------------------
# Layout, determinism, atomicity.

def test_the_release_holds_every_registry_task_at_its_paths(tiny):
  from twelve_in_one.tasks.registry import TASKS
  summary = read_summary(tiny)
  assert list(summary["tasks"]) == list(TASKS)   # every task, in registry order
  for name, task in TASKS.items():
    entry = summary["tasks"][name]
    assert (entry["dataroot"], entry["features"], entry["gt_features"]) == (
        task.dataroot, task.features, task.gt_features), name
    assert (entry["train_split"], entry["val_split"]) == (task.train_split, task.val_split)
    assert entry["baselines"]["metric"] == task.metric, name
    for path in filter(None, (task.dataroot, task.features, task.gt_features)):
      assert (tiny / "datasets" / path).is_dir(), (name, path)


def test_same_seed_gives_the_same_bytes(tiny, tmp_path):
  # Another process with another string-hash seed: no set or dict order leaks into the bytes.
  again = tmp_path / "again"
  code = ("import sys; from twelve_in_one.data.generate import generate; "
          f"generate(sys.argv[1], seed=0, progress=lambda m: None, **{TINY!r})")
  subprocess.run([sys.executable, "-c", code, str(again)], check=True,
                 env={**os.environ, "PYTHONHASHSEED": "12345"})
  first, second = _hashes(tiny), _hashes(again)
  assert first == second
  assert any(name.endswith("data.mdb") for name in first)
  assert any(name.startswith("samples/") for name in first)
  other = tmp_path / "other_seed"
  generate(other, seed=1, **TINY, **QUIET)
  different = _hashes(other)
  vqa = "datasets/VQA/v2_OpenEnded_mscoco_train2014_questions.json"
  assert different[vqa] != first[vqa]


def test_rerun_is_a_no_op_and_mismatches_are_refused(tiny, tmp_path):
  summary_path = tiny / "summary.json"
  before = summary_path.stat().st_mtime_ns
  result = generate(tiny, seed=0, **TINY, **QUIET)
  assert result["skipped"] and summary_path.stat().st_mtime_ns == before
  with pytest.raises(FileExistsError, match="generated with"):
    generate(tiny, seed=1, **TINY, **QUIET)
  (tmp_path / "not_a_release").mkdir()
  with pytest.raises(FileExistsError, match="not a generated release"):
    generate(tmp_path / "not_a_release", **TINY, **QUIET)


def test_an_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(qa_module, "write_gqa", fail)
  out = tmp_path / "release"
  with pytest.raises(KeyboardInterrupt):
    generate(out, **TINY, **QUIET)
  assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path):
  out = tmp_path / "cli"
  command = [sys.executable, "-m", "twelve_in_one.cli", "generate", f"--out={out}",
             "--num_images=8", "--num_val_images=4", "--num_test_images=4", "--num_regions=6"]
  done = subprocess.run(command, capture_output=True, text=True, check=True)
  assert "refcoco" in done.stdout and read_summary(out)["config"]["num_regions"] == 6
  again = subprocess.run(command, capture_output=True, text=True, check=True)
  assert "nothing was written" in again.stdout


# ---------------------------------------------------------------------------
# Every file is read back by the release readers.

def _load(datasets: Path, task: str, split: str):
  root = datasets / layout.DATAROOTS[task]
  if task == "vqa":
    return ann.load_vqa(root, split)
  if task == "genome_qa":
    return ann.load_genome(root, split)
  if task == "gqa":
    return ann.load_gqa(root, split)
  if task.startswith("retrieval"):
    dataset = "coco" if task == "retrieval_coco" else "flickr30k"
    return ann.load_retrieval(root / RETRIEVAL_FILES[split], dataset, split)
  if task.startswith("refcoco"):
    dataset = {"refcoco": "refcoco", "refcoco_plus": "refcoco+", "refcocog": "refcocog"}[task]
    return ann.load_refer(root / dataset, split, "umd" if dataset == "refcocog" else "unc")
  if task == "visual7w":
    return ann.load_visual7w(root, split)
  if task == "guesswhat_pointing":
    return ann.load_guesswhat(root, split)
  if task == "nlvr2":
    return ann.load_nlvr2(root, split)
  return ann.load_snli_ve(root, split)


EXTRA_SPLITS = {"vqa": ["train", "val", "test"], "gqa": ["train", "val", "test"],
                "refcoco": ["testA", "testB"], "refcoco_plus": ["testA", "testB"],
                "refcocog": ["test"], "visual7w": ["test"], "guesswhat_pointing": ["test"],
                "nlvr2": ["test"], "snli_ve": ["test"]}


def _feature_keys(task: str, entry: dict) -> list:
  if task == "nlvr2":
    return [entry["image_id_0"], entry["image_id_1"]]
  if task == "visual7w":
    return [entry["feature_key"]]
  return [entry["image_id"]]


@pytest.mark.parametrize("task", list(layout.DATAROOTS))
def test_every_split_loads_and_its_images_have_features(tiny, task):
  datasets = tiny / "datasets"
  features_path, gt_path = layout.FEATURES[task]
  default = FeatureLMDB(datasets / features_path)
  gt = FeatureLMDB(datasets / gt_path) if gt_path else None
  for split in [layout.TRAIN_SPLITS[task], layout.VAL_SPLITS[task], *EXTRA_SPLITS.get(task, [])]:
    entries = _load(datasets, task, split)
    assert len(entries) > 0, (task, split)
    # A split with a feature file of its own (VQA test2015) is only there, as in the release.
    split_path = get_task(task).features_for(split)
    detected = FeatureLMDB(datasets / split_path) if split_path != features_path else default
    for entry in entries:
      for key in _feature_keys(task, entry):
        assert key in detected, (task, split, key)
        if split_path != features_path:
          assert key not in default, (task, split, key)
        image = detected[key]
        # Every image has exactly num_regions boxes (+ the reader's global region).
        assert image.features.shape == (TINY["num_regions"] + 1, 2048)
      if gt is not None:
        assert _feature_keys(task, entry)[0] in gt
      if task in ("visual7w", "guesswhat_pointing"):
        boxes = gt[_feature_keys(task, entry)[0]].boxes_pixels5[1:, :4]
        assert max(entry["mc_idx"]) < len(boxes)
        # The GT box at the target's slot is the target box.
        ids = (entry["candidate_object_ids"] if task == "guesswhat_pointing"
               else [entry["gt_box_ids"][k] for k in entry["mc_idx"]])
        row = entry["mc_idx"][ids.index(entry["ref_id"])]
        np.testing.assert_allclose(boxes[row], entry["ref_box"], atol=0.01)


def test_hard_negatives_clean_ids_and_vocabularies(tiny):
  datasets = tiny / "datasets"
  for task, dataset in (("retrieval_coco", "coco"), ("retrieval_flickr30k", "flickr30k")):
    root = datasets / layout.DATAROOTS[task]
    train = ann.load_retrieval(root / RETRIEVAL_FILES["train"], dataset, "train")
    for name in ("hard_negative.pkl", "hard_negative_cleaned.pkl"):
      pool = ann.load_hard_negatives(root / name)
      assert sorted(pool.image_ids) == sorted(train.image_ids)
      assert all(pool.pool[row, 0] == row for row in range(len(pool.image_ids)))
    assert all(len(train.captions_of_image[i]) == 5 for i in train.image_ids)
  from twelve_in_one.tasks.registry import TASKS
  for task in TASKS.values():
    if task.clean_source is not None:
      test_ids = load_test_image_ids(datasets / task.dataroot / "cache", [task.clean_source])
      assert len(test_ids) == TINY["num_test_images"], task.name
  vqa_vocab = load_vqa_answer_vocab(datasets / "VQA")
  genome_vocab = load_vqa_answer_vocab(datasets / "visual_genome")
  assert vqa_vocab == genome_vocab  # VG-QA answers live in VQA's label space


def test_texts_fit_the_task_lengths(tiny):
  from twelve_in_one.data.tokenizer import Tokenizer
  try:
    tokenizer = Tokenizer()
  except (FileNotFoundError, ValueError) as error:
    pytest.skip(f"no BERT vocabulary: {error}")
  from twelve_in_one.data.generate.parts import PARTS
  from twelve_in_one.tasks.registry import TASKS
  # The release's text lengths, and the shorter ones the smoke run trains with (the parts').
  max_seq = {name: min(task.max_seq_length, PARTS[name].text_length)
             for name, task in TASKS.items()}
  field = {"vqa": "question", "genome_qa": "question", "gqa": "question", "nlvr2": "sentence",
           "snli_ve": "hypothesis", "guesswhat_pointing": "dialogue"}
  for task, limit in max_seq.items():
    for split in (layout.TRAIN_SPLITS[task], layout.VAL_SPLITS[task]):
      for entry in _load(tiny / "datasets", task, split):
        text = entry[field.get(task, "caption")]
        assert len(tokenizer.tokenize(text)) <= limit - 2, (task, text)


# ---------------------------------------------------------------------------
# Truth: answers against the scene graph.

_POSITIONS = {"on the left": "left", "on the right": "right", "at the top": "top",
              "at the bottom": "bottom"}
_ORDER = {"left": lambda o: o.cx, "right": lambda o: -o.cx, "top": lambda o: o.cy,
          "bottom": lambda o: -o.cy}
_BEATS = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}


def resolve(scene: Scene, phrase: str) -> int:
  """The one object a (non-relational) description names; fails if it is not unique."""
  position = None
  for suffix, word in _POSITIONS.items():
    if phrase.endswith(" " + suffix):
      position, phrase = word, phrase[:-len(suffix) - 1]
  wanted = {}
  for word in phrase.split():
    key = ("size" if word in SIZES else "colour" if word in COLOURS else
           "shape" if word in SHAPES else None)
    assert key is not None or word == "object", phrase
    if key:
      wanted[key] = word
  group = [k for k, o in enumerate(scene.objects)
           if all(getattr(o, key) == value for key, value in wanted.items())]
  if position is None:
    assert len(group) == 1, (phrase, group)
    return group[0]
  best = min(group, key=lambda k: _ORDER[position](scene.objects[k]))
  assert all(RELATIONS[_BEATS[position]](scene.objects[best], scene.objects[k])
             for k in group if k != best), phrase
  return best


def _count(scene: Scene, **wanted: str) -> int:
  return sum(all(getattr(o, k) == v for k, v in wanted.items()) for o in scene.objects)


def _qa_truth(scene: Scene, question: str) -> str | None:
  """The answer the scene graph gives to a VQA/VG/GQA template, None if not parsed."""
  patterns = [
      (r"(?:What color is|What is the color of|Which color is) the (.+)\?",
       lambda m: scene.objects[resolve(scene, m[1])].colour),
      (r"What shape is the (.+)\?", lambda m: scene.objects[resolve(scene, m[1])].shape),
      (r"How many (\w+) objects (?:are there|are in the picture)\?",
       lambda m: str(_count(scene, colour=m[1]))),
      (r"How many (\w+)s (?:are there|are in the picture)\?",
       lambda m: str(_count(scene, shape=m[1]))),
      (r"How many (\w+) (\w+)s (?:are there|are in the picture)\?",
       lambda m: str(_count(scene, colour=m[1], shape=m[2]))),
      (r"Is there an? (\w+) (\w+)\?",
       lambda m: "yes" if _count(scene, colour=m[1], shape=m[2]) else "no"),
      (r"Is the (.+) to the left or to the right of the (.+)\?",
       lambda m: "left" if RELATIONS["left of"](scene.objects[resolve(scene, m[1])],
                                                scene.objects[resolve(scene, m[2])]) else "right"),
      (r"Is the (.+) to the left of the (.+)\?",
       lambda m: "yes" if RELATIONS["left of"](scene.objects[resolve(scene, m[1])],
                                               scene.objects[resolve(scene, m[2])]) else "no"),
      (r"Is the (.+) above the (.+)\?",
       lambda m: "yes" if RELATIONS["above"](scene.objects[resolve(scene, m[1])],
                                             scene.objects[resolve(scene, m[2])]) else "no"),
      (r"Is the (.+) (bigger|smaller) than the (.+)\?",
       lambda m: "yes" if (scene.objects[resolve(scene, m[1])].size
                           == ("large" if m[2] == "bigger" else "small")) else "no"),
      (r"On which side is the (.+)\?", lambda m: side(scene, scene.objects[resolve(scene, m[1])])),
      (r"Where is the (.+)\?",
       lambda m: f"{level(scene, scene.objects[resolve(scene, m[1])])} "
                 f"{side(scene, scene.objects[resolve(scene, m[1])])}"),
      (r"Is the (.+) (\w+)\?",
       lambda m: ("yes" if scene.objects[resolve(scene, m[1])].colour == m[2] else "no")
       if m[2] in COLOURS else None),
      (r"What is the (.+)\?", lambda m: scene.objects[resolve(scene, m[1])].shape),
  ]
  if "the object " in question or " same " in question or "both" in question:
    return None  # relations to a third object, comparisons, conjunctions: not parsed here
  for pattern, truth in patterns:
    match = re.fullmatch(pattern, question)
    if match:
      return truth(match)
  return None


@pytest.mark.parametrize("task", ["vqa", "genome_qa", "gqa"])
def test_qa_answers_are_true_of_the_scene(tiny, task):
  config = GeneratorConfig(seed=0, **TINY)
  scenes = _scenes(config)["coco" if task == "vqa" else "genome"]
  root = tiny / "datasets" / layout.DATAROOTS[task]
  vocab = load_gqa_answer_vocab(root) if task == "gqa" else load_vqa_answer_vocab(root)
  checked = total = 0
  for split in (layout.TRAIN_SPLITS[task], layout.VAL_SPLITS[task]):
    for entry in _load(tiny / "datasets", task, split).entries[:400]:
      total += 1
      scene = scenes[int(entry["image_id"])]
      truth = _qa_truth(scene, entry["question"])
      if truth is None:
        continue
      checked += 1
      assert vocab.label2ans[entry["answer"]["labels"][0]] == truth, entry["question"]
  assert checked >= 0.5 * total, (checked, total)


@pytest.mark.parametrize("task,dataset", [("refcoco", "refcoco"), ("refcoco_plus", "refcoco+")])
def test_referring_expressions_name_their_object(tiny, task, dataset):
  scenes = _scenes(GeneratorConfig(seed=0, **TINY))["coco"]
  for split in ("train", "val"):
    for entry in _load(tiny / "datasets", task, split):
      phrase = re.sub(r"^(the|a|an) ", "", entry["caption"]).removesuffix(" in the picture")
      scene = scenes[entry["image_id"]]
      if dataset == "refcoco+":
        assert not any(word in phrase for word in _POSITIONS), phrase
      np.testing.assert_allclose(scene.objects[resolve(scene, phrase)].box, entry["ref_box"],
                                 atol=0.01)


def test_pointing_dialogues_and_statements_are_true(tiny):
  config = GeneratorConfig(seed=0, **TINY)
  scenes = _scenes(config)
  datasets = tiny / "datasets"
  for entry in _load(datasets, "visual7w", "train"):
    scene = scenes["genome"][entry["image_id"]]
    which = re.fullmatch(r"Which (\w+) is (\w+)\?", entry["caption"])
    if which and which[1] in SHAPES:
      target = [k for k, o in enumerate(scene.objects)
                if o.shape == which[1] and o.colour == which[2]]
      assert len(target) == 1
    else:
      target = [resolve(scene, re.fullmatch(r"Which (?:object )?is the (.+)\?",
                                            entry["caption"])[1])]
    np.testing.assert_allclose(scene.objects[target[0]].box, entry["ref_box"], atol=0.01)
  for entry in _load(datasets, "guesswhat_pointing", "train"):
    scene = scenes["coco"][entry["image_id"]]
    fits = []
    for k, obj in enumerate(scene.objects):
      answers = {"is it big?": obj.size == "large",
                 "is it on the left?": side(scene, obj) == "left",
                 "is it at the top?": level(scene, obj) == "top"}
      answers.update({f"is it a {s}?": obj.shape == s for s in SHAPES})
      answers.update({f"is it {c}?": obj.colour == c for c in COLOURS})
      if all(answers[q] == (a == "Yes") for q, a in zip(entry["questions"], entry["answers"])):
        fits.append(obj.box)
    assert len(fits) == 1
    np.testing.assert_allclose(fits[0], entry["ref_box"], atol=0.01)
  names = {0: "contradiction", 1: "neutral", 2: "entailment"}
  positions = {"on the left side of the picture": lambda o, scene: side(scene, o) == "left",
               "on the right side of the picture": lambda o, scene: side(scene, o) == "right",
               "in the upper half of the picture": lambda o, scene: level(scene, o) == "top",
               "in the lower half of the picture": lambda o, scene: level(scene, o) == "bottom"}
  seen = set()
  for entry in _load(datasets, "snli_ve", "train"):
    scene = scenes["flickr"][entry["image_id"]]
    match = re.fullmatch(r"The (.+?) is (?:a )?(.+)\.", entry["hypothesis"])
    assert match, entry["hypothesis"]
    subject = {("size" if w in SIZES else "colour" if w in COLOURS else "shape"): w
               for w in match[1].split() if w != "object"}
    named = [o for o in scene.objects if all(getattr(o, k) == v for k, v in subject.items())]
    label = names[entry["answer"]["labels"][0]]
    seen.add(label)
    # Neutral: the subject names no object; otherwise it names exactly one, and the predicate
    # decides between entailment and contradiction.
    assert len(named) <= 1, entry["hypothesis"]
    if not named:
      assert label == "neutral", entry["hypothesis"]
      continue
    if match[2] in positions:
      clear = side if "side" in match[2] else level   # no position near the middle is used
      assert clear(scene, named[0]) is not None, entry["hypothesis"]
      truth = positions[match[2]](named[0], scene)
    else:
      key = "size" if match[2] in SIZES else "colour" if match[2] in COLOURS else "shape"
      truth = getattr(named[0], key) == match[2]
    assert label == ("entailment" if truth else "contradiction"), entry["hypothesis"]
  assert seen == set(names.values())
  for entry in _load(datasets, "nlvr2", "train"):
    pair = [scenes["nlvr2"][entry["image_id_0"]], scenes["nlvr2"][entry["image_id_1"]]]
    both = re.fullmatch(r"Both images contain an? (\w+)( object)?\.", entry["sentence"])
    if both:
      key = "colour" if both[2] else "shape"
      truth = all(_count(scene, **{key: both[1]}) for scene in pair)
      assert truth == bool(entry["answer"]["labels"][0]), entry["sentence"]


def test_every_object_is_detected_and_features_come_from_the_pixels(tiny):
  config = GeneratorConfig(seed=0, **TINY)
  datasets = tiny / "datasets"
  reader = FeatureLMDB(datasets / layout.FEATURES["vqa"][0])   # the COCO pool's features
  for spec in pools.scene_specs("coco", config)[:6]:
    image = reader[spec.image_id]
    boxes = image.boxes_pixels5[1:, :4]
    for obj in spec.scene.objects:
      assert box_iou(boxes, np.asarray(obj.box)).max() > 0.5
    picture = Image.open(tiny / "images" / "coco" / f"{spec.key}.png").convert("RGB")
    np.testing.assert_allclose(extract(picture, boxes), image.features[1:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(image.features[0], image.features[1:].mean(0), rtol=1e-5)


# ---------------------------------------------------------------------------
# No shortcuts.

def test_text_only_and_image_only_baselines_stay_near_chance(small):
  summary = read_summary(small)
  report = []
  for task, info in summary["tasks"].items():
    base = info["baselines"]
    chance, n = base["chance"], base["val_examples"]
    margin = max(0.04, 3 * math.sqrt(chance * (1 - chance) / n))
    report.append(f"{task}: chance {chance:.3f} text {base['text_only']:.3f} "
                  f"image {base['image_only']:.3f} margin {margin:.3f} (n={n})")
    assert base["text_only"] <= chance + margin, report[-1]
    assert base["image_only"] <= chance + margin, report[-1]
  print("\n".join(report))


def test_pretraining_corpus_is_written_in_the_official_format_and_prepares(tmp_path_factory,
                                                                            tmp_path):
  from twelve_in_one.data.concap.pipeline import pretraining_iterator
  from twelve_in_one.data.concap.prepare import prepare_corpus
  from twelve_in_one.data.concap.release import ConcapLMDB, read_captions, split_files
  from twelve_in_one.data.generate import pretraining_corpus

  release = tmp_path_factory.mktemp("with_corpus") / "release"
  generate(release, seed=0, pretraining_corpus=True, **TINY, **QUIET)
  summary = read_summary(str(release))
  corpus = release / "datasets" / pretraining_corpus.CORPUS_FOLDER
  pools = len(pretraining_corpus.CORPUS_POOLS)
  expected = {"train": pools * TINY["num_images"], "val": TINY["num_val_images"] * (pools + 2)}
  for split, count in expected.items():   # the genome pool has three times the val scenes
    lmdb_path, caption_path = split_files(corpus, split)
    records = list(ConcapLMDB(lmdb_path))
    assert len(records) == count == summary["pretraining_corpus"][split]["images"], split
    assert len(read_captions(caption_path)) == count
    for record in records:
      assert record.num_boxes == TINY["num_regions"] and record.caption
      assert record.image_feature_wp.shape == (TINY["num_regions"], 2048)
      targets = record.image_target_wp
      assert targets.shape == (TINY["num_regions"], pretraining_corpus.NUM_CLASSES)
      np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
      # Every box puts its mass on the background and at most one object type.
      assert ((targets[:, 1:] > 0).sum(axis=1) <= 1).all()
      assert (targets[:, len(pretraining_corpus.OBJECT_CLASSES) + 1:] == 0).all()
  # The boxes detected around objects mostly cover them: their object class dominates.
  train = list(ConcapLMDB(split_files(corpus, "train")[0]))
  object_mass = np.concatenate([r.image_target_wp[:, 1:].sum(axis=1) for r in train])
  assert (object_mass > 0.5).mean() > 0.3

  prepare_corpus(corpus, tmp_path / "prepared", max_seq_length=24,
                 max_boxes=TINY["num_regions"], progress=False, log=lambda line: None)
  batch = next(pretraining_iterator(tmp_path / "prepared", "train", seed=0,
                                    batch_size_per_process=4))
  assert batch["image_target_kl"].shape == (4, TINY["num_regions"], pretraining_corpus.NUM_CLASSES)
  assert batch["input_ids"].shape == (4, 24)
  assert set(batch["next_sentence_label"].tolist()) <= {0, 1}
