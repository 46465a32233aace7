"""A tiny official release, written on the fly in the exact release formats, for all 12 tasks.

`write_release(root)` writes `root/datasets/...` with the paths of the task registry: feature
LMDBs (`write_feature_lmdb`, the `convert_to_lmdb.py` layout), GT-box LMDBs, and each
dataset's annotation files as its reader expects them. Boxes of the region tasks are explicit
so tests can compute IoU targets by hand; everything else is random but seeded.

`small_task(name)` is the registry task with tiny shapes (few regions, short text) so tests
stay fast; every builder, prepare and the pipeline read the shapes from the task.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np

from twelve_in_one.data.features import write_feature_lmdb
from twelve_in_one.tasks.registry import get_task

MAP_SIZE = 1 << 26
FEATURE_DIM = 2048
SEQ_LEN = 12
# Per task: (max_region_num, num_detected_regions).
SMALL_SHAPES = {"visual7w": (12, 4), "guesswhat_pointing": (10, 4)}
VQA_VOCAB = {"net": 0, "yes": 1, "no": 2, "two": 3, "red": 4, "cat": 5}
GQA_VOCAB = {"left": 0, "right": 1, "blue": 2}

# RefCOCO image 9 (640x480): detected boxes and the COCO annotations (x, y, w, h).
REFER_DETECTED = {9: [[0, 0, 100, 100], [10, 20, 40.5, 60], [300, 300, 400, 400],
                      [10, 20, 25, 60], [200, 100, 260, 200]],
                  10: [[5, 5, 30, 30], [100, 100, 200, 150]]}
REFER_ANNOTATIONS = {500: (9, [10, 20, 30.5, 40]), 501: (9, [300, 300, 50, 50]),
                     502: (10, [5, 5, 20, 20])}
# ref_id -> (ann_id, split, sentences)
REFER_REFS = {100: (500, "train", ["left man", "the guy on the left"]),
              101: (501, "val", ["square thing"]),
              102: (502, "testA", ["small box"]),
              103: (500, "testB", ["man"])}
V7W_BOXES = {box_id: [box_id * 10, 2, 10, 20] for box_id in range(11, 18)}
GUESSWHAT_BOXES = {301: [0, 0, 50, 50], 302: [10, 10, 60, 60], 303: [20, 20, 120, 220],
                   305: [300, 100, 400, 300], 401: [0, 0, 10, 10], 402: [5, 5, 50, 50]}
GUESSWHAT_OBJECTS = {391895: [305, 301, 303, 302, 303], 60623: [402, 401]}
HARD_POOL = [[0, 2, 2], [1, 0, 0], [2, 1, 1]]
SNLI_VE = {"train": [(1000, "entailment"), (1001, "neutral"), (1002, "contradiction"),
                     (1003, "entailment")],
           "dev": [(1000, "neutral"), (1002, "-")], "test": [(1001, "contradiction")]}


def small_task(name: str):
  """The registry task `name` with tiny shapes."""
  task = get_task(name)
  regions, detected = SMALL_SHAPES.get(task.name, (5, task.num_detected_regions))
  return dataclasses.replace(task, max_seq_length=SEQ_LEN, max_region_num=regions,
                             num_detected_regions=detected)


def _dump(path: Path, value, kind: str = "pickle") -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  if kind == "pickle":
    path.write_bytes(pickle.dumps(value))
  elif kind == "json":
    path.write_text(json.dumps(value))
  elif kind == "jsonl":
    path.write_text("".join(json.dumps(record) + "\n" for record in value))
  else:
    np.save(path, np.asarray(value, np.int64))


def _record(rng, image_id, width: int, height: int, boxes=None, num_boxes: int = 0) -> dict:
  if boxes is None:
    x1 = rng.uniform(0, width / 2, num_boxes)
    y1 = rng.uniform(0, height / 2, num_boxes)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, width / 2, num_boxes),
                      y1 + rng.uniform(1, height / 2, num_boxes)], axis=1)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return {"image_id": image_id, "image_h": height, "image_w": width, "boxes": boxes,
          "features": rng.standard_normal((len(boxes), FEATURE_DIM)).astype(np.float32) * 3}


def _lmdb(path: Path, records: list[dict]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  write_feature_lmdb(path, records, map_size=MAP_SIZE)


def _xyxy(box) -> list[float]:
  x, y, w, h = box
  return [x, y, x + w, y + h]


def write_release(root: Path, seed: int = 0) -> Path:
  """Write the tiny release under `root/datasets`; returns `root`."""
  rng = np.random.default_rng(seed)
  data = root / "datasets"
  coco_sizes = {9: (640, 480, 6), 25: (500, 375, 3), 30: (333, 500, 7), 42: (640, 427, 4),
                391895: (640, 480, 5), 60623: (500, 400, 2)}
  _lmdb(data / get_task("vqa").features, [_record(rng, i, w, h, num_boxes=n)
                                           for i, (w, h, n) in coco_sizes.items()])
  # COCO test2015 images (VQA test) are in a feature file of their own, as in the release.
  _lmdb(data / get_task("vqa").features_for("test"),
        [_record(rng, i, 640, 480, num_boxes=4) for i in (1, 2)])
  _lmdb(data / get_task("snli_ve").features,
        [_record(rng, i, 500, 333, num_boxes=3 + i % 4) for i in (1000, 1001, 1002, 1003)])

  # VQA: 4 train questions (image 42 is a COCO test image), 6 val, 2 test (test2015 images).
  vqa = data / "VQA"
  questions = {"train": [(10, 9), (20, 25), (30, 30), (40, 42)],
               "val": [(100 + k, (9, 25, 30)[k % 3]) for k in range(6)],
               "test": [(7, 2), (3, 1)]}
  for part, pairs in questions.items():
    year = "2015" if part == "test" else "2014"
    _dump(vqa / f"v2_OpenEnded_mscoco_{part}{year}_questions.json", {"questions": [
        {"question_id": q, "image_id": i, "question": f"What is thing {q}?"} for q, i in pairs]},
          "json")
    if part != "test":
      _dump(vqa / "cache" / f"{part}_target.pkl", [
          {"question_id": q, "image_id": i, "labels": [q % 6, (q + 1) % 6], "scores": [1.0, 0.3]}
          for q, i in pairs])
  _dump(vqa / "cache" / "trainval_ans2label.pkl", VQA_VOCAB)
  _dump(vqa / "cache" / "trainval_label2ans.pkl", sorted(VQA_VOCAB, key=VQA_VOCAB.get))
  _dump(vqa / "cache" / "coco_test_ids.npy", [42], "npy")

  # VG-QA: the official split keeps the last 5000 questions for val.
  genome = data / "visual_genome"
  _lmdb(data / get_task("genome_qa").features,
        [_record(rng, i, 400, 300, num_boxes=4) for i in (1, 2, 3)])
  _dump(genome / "cache" / "trainval_target.pkl", [
      {"question_id": q, "image_id": 1 + q % 3, "question": f"vg question {q}",
       "labels": [q % 6], "scores": [0.9]} for q in range(5003)])
  _dump(genome / "cache" / "trainval_ans2label.pkl", VQA_VOCAB)
  _dump(genome / "cache" / "trainval_label2ans.pkl", sorted(VQA_VOCAB, key=VQA_VOCAB.get))
  _dump(genome / "cache" / "genome_test_ids.npy", [], "npy")

  # GQA: string image ids.
  gqa = data / "gqa"
  _lmdb(data / get_task("gqa").features, [_record(rng, i, 500, 375, num_boxes=6)
                                           for i in ("n161313", "2354786")])
  for part, qids in (("train", (5, 6, 7)), ("val", (8, 9))):
    _dump(gqa / "cache" / f"{part}_target.pkl", [
        {"question_id": str(q), "image_id": ("n161313", "2354786")[q % 2],
         "question": f"gqa question {q}", "labels": [q % 3], "scores": [1.0]} for q in qids])
  _dump(gqa / "testdev_balanced_questions.json",
        {"201": {"imageId": "n161313", "question": "Is it left?"}}, "json")
  _dump(gqa / "cache" / "trainval_ans2label.pkl", GQA_VOCAB)
  _dump(gqa / "cache" / "trainval_label2ans.pkl", sorted(GQA_VOCAB, key=GQA_VOCAB.get))
  _dump(gqa / "cache" / "genome_test_ids.npy", [], "npy")

  # Retrieval: COCO (id) and Flickr30k (img_path), hard-negative pools over the train images.
  for name, ids, key in (("cocoRetreival", (9, 25, 30), "id"),
                         ("flickr30k", (1000, 1001, 1002), "img_path")):
    folder = data / name
    label = (lambda i: i) if key == "id" else (lambda i: f"{i}.jpg")
    _dump(folder / "all_data_final_train_2014.jsonline",
          [{key: label(i), "sentences": [f"caption {i} {k}" for k in range(1 + n % 2)]}
           for n, i in enumerate(ids)] + [{key: label(42 if key == "id" else 1003),
                                          "sentences": ["a test image"]}], "jsonl")
    _dump(folder / "all_data_final_test_set0_2014.jsonline",
          [{key: label(i), "sentences": [f"val caption {i}"]} for i in ids], "jsonl")
    # Each image has a single hard negative (pool positions 1..): 9 -> 30, 25 -> 9, 30 -> 25.
    _dump(folder / "hard_negative_cleaned.pkl", {
        "train_image_list": list(ids), "train_hard_pool": np.array(HARD_POOL)})
    cache_name = "coco_test_ids.npy" if key == "id" else "flickr_test_ids.npy"
    _dump(folder / "cache" / cache_name, [42 if key == "id" else 1003], "npy")

  # RefCOCO / RefCOCO+ / RefCOCOg: same refs, own folders and feature files.
  for task_name, folder, split_by in (("refcoco", "refcoco", "unc"),
                                      ("refcoco_plus", "refcoco+", "unc"),
                                      ("refcocog", "refcocog", "umd")):
    task = get_task(task_name)
    _lmdb(data / task.features, [_record(rng, i, 640, 480, boxes) for i, boxes in
                                 REFER_DETECTED.items()])
    _lmdb(data / task.gt_features, [
        _record(rng, i, 640, 480, [_xyxy(box) for image, box in REFER_ANNOTATIONS.values()
                                   if image == i]) for i in REFER_DETECTED])
    splits = {"train": "train", "val": "val", "testA": "testA" if split_by == "unc" else "test",
              "testB": "testB" if split_by == "unc" else "test"}
    _dump(data / "refcoco" / folder / f"refs({split_by}).p", [
        {"ref_id": ref, "ann_id": ann, "image_id": REFER_ANNOTATIONS[ann][0],
         "split": splits[split], "category_id": 1,
         "sent_ids": [10 * ref + k for k in range(len(sentences))],
         "sentences": [{"raw": s, "sent": s, "sent_id": 10 * ref + k, "tokens": s.split()}
                       for k, s in enumerate(sentences)]}
        for ref, (ann, split, sentences) in REFER_REFS.items()])
    _dump(data / "refcoco" / folder / "instances.json", {
        "images": [{"id": i, "width": 640, "height": 480} for i in REFER_DETECTED],
        "annotations": [{"id": ann, "image_id": image, "category_id": 1, "bbox": box}
                        for ann, (image, box) in REFER_ANNOTATIONS.items()],
        "categories": [{"id": 1, "name": "person"}]}, "json")
  _dump(data / "refcoco" / "cache" / "coco_test_ids.npy", [], "npy")

  # Visual7W: image 2346 has fewer detections than num_detected_regions (a masked gap).
  v7w = data / "visual7w"
  images = [{"image_id": 2345, "split": "train", "qa_pairs": [
                {"qa_id": 1, "question": "Which is red?", "answer": 14,
                 "multiple_choices": [12, 16, 11]},
                {"qa_id": 2, "question": "Which is blue?", "answer": 11,
                 "multiple_choices": [17, 13, 12]}]},
            {"image_id": 2346, "split": "val", "qa_pairs": [
                {"qa_id": 3, "question": "Which one?", "answer": 15,
                 "multiple_choices": [16, 17, 13]}]},
            {"image_id": 2347, "split": "test", "qa_pairs": [
                {"qa_id": 4, "question": "Which?", "answer": 11,
                 "multiple_choices": [12, 13, 14]}]}]
  _dump(v7w / "dataset_v7w_pointing.json", {"images": images, "boxes": [
      {"box_id": b, "x": x, "y": y, "width": w, "height": h}
      for b, (x, y, w, h) in V7W_BOXES.items()]}, "json")
  _dump(v7w / "cache" / "genome_test_ids.npy", [], "npy")
  task = get_task("visual7w")
  _lmdb(data / task.features, [_record(rng, f"v7w_{image['image_id']}", 640, 480,
                                       num_boxes=2 if image["image_id"] == 2346 else 5)
                               for image in images])
  _lmdb(data / task.gt_features, [
      _record(rng, f"v7w_{image['image_id']}", 640, 480, [_xyxy(V7W_BOXES[b]) for b in sorted(
          {b for qa in image["qa_pairs"] for b in [*qa["multiple_choices"], qa["answer"]]})])
      for image in images])

  # GuessWhat pointing: the GT file holds each image's sorted unique objects.
  guesswhat = data / "guesswhat"
  games = {"train": [(7, 391895, [303, 301], 303), (8, 60623, [402], 402)],
           "valid": [(9, 391895, [301, 302, 303, 305], 302)],
           "test": [(10, 60623, [401, 402], 401)]}
  for split, split_games in games.items():
    _dump(guesswhat / f"guesswhat.{split}.jsonl", [
        {"id": g, "image": {"id": i}, "object_id": target, "status": "success",
         "objects": [{"id": o} for o in objects],
         "qas": [{"id": 1, "question": "is it a person?", "answer": "Yes"},
                 {"id": 2, "question": "on the left?", "answer": "No"}]}
        for g, i, objects, target in split_games], "jsonl")
  _dump(guesswhat / "cache" / "image_bbox_list.pkl",
        {i: {"bboxes": objects} for i, objects in GUESSWHAT_OBJECTS.items()})
  _dump(guesswhat / "cache" / "bboxes_dict.pkl", GUESSWHAT_BOXES)
  _dump(guesswhat / "cache" / "coco_test_ids.npy", [], "npy")
  _lmdb(data / get_task("guesswhat_pointing").gt_features, [
      _record(rng, i, *coco_sizes[i][:2], [GUESSWHAT_BOXES[o] for o in sorted(set(objects))])
      for i, objects in GUESSWHAT_OBJECTS.items()])

  # NLVR2: one image with only 2 regions (3 rows with the global one).
  identifiers = {"train": ["train-1-0-0", "train-2-1-1", "train-3-0-2"],
                 "dev": ["dev-850-0-0", "dev-851-1-1"], "test": ["test1-0-1-0"]}
  _dump_nlvr2(data, identifiers, rng)

  # SNLI-VE: Flickr30k images; 1003 is a Flickr test image.
  snli = data / "visual_entailment"
  for split, pairs in SNLI_VE.items():
    _dump(snli / f"snli_ve_{split}.jsonl", [
        {"Flikr30kID": f"{i}.jpg", "sentence2": f"A hypothesis about {i}.", "gold_label": label}
        for i, label in pairs], "jsonl")
  _dump(snli / "cache" / "flickr_test_ids.npy", [1003], "npy")
  return root


def _dump_nlvr2(data: Path, identifiers: dict[str, list[str]], rng) -> None:
  keys = []
  for split, ids in identifiers.items():
    _dump(data / "nlvr2" / f"{split}.json", [
        {"identifier": identifier, "sentence": f"There are {k + 2} dogs.",
         "label": ("True", "False")[k % 2]} for k, identifier in enumerate(ids)], "jsonl")
    for identifier in ids:
      stem = "-".join(identifier.split("-")[:-1])
      keys += [f"{stem}-img0", f"{stem}-img1"]
  _lmdb(data / get_task("nlvr2").features,
        [_record(rng, key, 600, 400, num_boxes=2 if key == "train-1-0-img0" else 5)
         for key in keys])
