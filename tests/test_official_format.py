"""The official scripts' result entries for every head type (`evaluate/official_format.py`)."""

from __future__ import annotations

import numpy as np
import pytest

from twelve_in_one.evaluate.official_format import RETRIEVAL_TOP, official_paths, official_results
from twelve_in_one.tasks.registry import TASKS, get_task


def test_classifier_entries_are_the_server_shapes():
  records = [{"question_id": 7, "label": 3, "answer": "two", "score": 1.0},
             {"question_id": 9, "label": 0}]
  assert official_results(get_task("vqa"), records) == [
      {"question_id": 7, "answer": "two"}, {"question_id": 9, "answer": "0"}]
  assert official_results(get_task("gqa"), records) == [
      {"questionId": "7", "prediction": "two"}, {"questionId": "9", "prediction": "0"}]


def test_grounding_and_multiple_choice_entries():
  grounding = [{"id": 11, "region": 4, "box": [0, 0, 1, 1], "iou": 0.75, "correct": True},
               {"id": 12, "region": 0, "box": [0, 0, 1, 1], "iou": 0.0, "correct": False}]
  assert official_results(get_task("refcocog"), grounding) == [
      {"id": 11, "target": 4, "IOU": 0.75}, {"id": 12, "target": 0, "IOU": 0.0}]
  choices = [{"id": 5, "choice": 2, "region": 104, "box": [0, 0, 1, 1], "correct": True}]
  for name in ("visual7w", "guesswhat_pointing"):
    assert official_results(get_task(name), choices) == [{"id": 5, "target": 2}]


def test_binary_and_three_way_classifiers_have_no_official_entries():
  records = [{"id": 1, "label": 1, "prediction": "True", "probabilities": [0.2, 0.8]}]
  assert official_results(get_task("nlvr2"), records) == []
  assert official_results(get_task("snli_ve"), records) == []


def test_retrieval_lists_each_captions_best_images_from_the_score_matrix():
  task = get_task("retrieval_coco")
  rng = np.random.default_rng(0)
  scores = rng.standard_normal((3, RETRIEVAL_TOP + 5))
  scores[1, 7] = scores[1, 8] = 10.0          # a tie keeps image order
  records = [{"caption_id": i} for i in range(3)]
  top = official_results(task, records, scores)
  assert [len(row) for row in top] == [RETRIEVAL_TOP] * 3
  assert top[1][:2] == [7, 8]
  for row, values in zip(top, scores):
    assert row == sorted(range(len(values)), key=lambda i: -values[i])[:RETRIEVAL_TOP]
  with pytest.raises(ValueError, match="retrieval_coco: the official retrieval results need"):
    official_results(task, records)
  with pytest.raises(ValueError, match="2 score rows for 3 captions"):
    official_results(task, records, scores[:2])


def test_every_registered_task_has_an_official_format_and_its_own_folder(tmp_path):
  folders = set()
  for task in TASKS.values():
    scores = np.zeros((0, 4)) if task.head_type == "VL-logit" else None
    assert official_results(task, [], scores) == []
    result, others = official_paths(task, "val", str(tmp_path))
    assert result.endswith("val_result.json") and others.endswith("val_others.json")
    folders.add(result.rsplit("/", 2)[1])
  assert len(folders) == len(TASKS)
