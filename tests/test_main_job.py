"""A tiny version of the README's main job, end to end: generate -> prepare -> train -> table.

Same code path as `twelve-in-one train --config configs/twelve_in_one.py:smoke`, with the tiny
model, a tiny generated release, one iteration and two tasks of different families (answer
classifier, region grounding), so the suite stays within its time budget: the study's
multi-task arm then runs the very steps the end-to-end run compiled. The twelve tasks'
preparation is covered by tests/data and tests/test_generate.py.
"""

import json

import pytest

from run_configs import config_module
from twelve_in_one.data.generate import generate
from twelve_in_one.train.entry import run_training


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """A tiny generated release, shared by the tests of this file."""
  folder = tmp_path_factory.mktemp("main_job") / "release"
  generate(folder, seed=0, num_images=8, num_val_images=4, num_test_images=4, num_regions=6,
           progress=lambda message: None)
  return folder


def _tiny_smoke_config(release, tasks: str, iterations: int):
  """The smoke config on the tiny generated release, with the tiny model and batches of 8."""
  config = config_module().get_config("smoke")
  config.model.name = "tiny"
  config.model.vocab_size = 30522   # the data is tokenized with bert-base-uncased
  config.data.release_dir = str(release)
  config.schedule.num_epochs = 1
  config.schedule.iterations_per_epoch = iterations
  config.eval_during_training = False
  config.compilation_cache_dir = ""
  config.tasks = tasks
  for name in config.task_settings:
    settings = config.task_settings[name]
    settings.batch_size = 8
    settings.num_detected_regions = 7       # 6 boxes + the global region
    settings.max_region_num = {"visual7w": 13, "guesswhat_pointing": 14}.get(name, 7)
  return config


def test_tiny_main_job_end_to_end(release, tmp_path):
  config = _tiny_smoke_config(release, "vqa,refcoco", iterations=1)
  result = run_training(config, str(tmp_path / "work"))

  table = json.loads((tmp_path / "work" / "results.json").read_text())
  assert set(table) == set(result.results) == {"vqa", "refcoco"}
  for name, row in table.items():
    assert 0.0 <= row["score"] <= 1.0 and row["examples"] > 0, name
    assert 0.0 < row["chance"] < 1.0, name   # the generator's chance levels annotate the table
  markdown = (tmp_path / "work" / "results.md").read_text()
  assert markdown.count("\n") == 4 and "| vqa | soft accuracy |" in markdown
  assert all(count == 1 for count in result.compilations.values())


def test_study_compares_the_arms_with_equal_budgets_and_resumes(release, tmp_path):
  """`twelve-in-one study`: a multi-task run and one single-task run per task, side by side."""
  from twelve_in_one.train.study import run_study

  config = _tiny_smoke_config(release, "vqa,refcoco", iterations=2)
  out = run_study(config, str(tmp_path / "study"), say=lambda message: None)

  rows = {row["task"]: row for row in out["tasks"]}
  assert list(rows) == ["vqa", "refcoco"] and out["iterations"] == 2
  for name, row in rows.items():
    # Equal budgets: every task got one update per iteration in both arms.
    assert row["single_updates"] == row["multi_updates"] == 2, row
    single = json.loads((tmp_path / "study" / "single" / name / "results.json").read_text())
    multi = json.loads((tmp_path / "study" / "multi_task" / "results.json").read_text())
    assert set(single) == {name} and row["single"] == single[name]["score"]
    assert row["multi"] == multi[name]["score"] and 0 < row["chance"] < 1
  mean_single = (rows["vqa"]["single"] + rows["refcoco"]["single"]) / 2
  assert abs(out["mean"]["single"] - mean_single) < 1e-12
  table = (tmp_path / "study" / "study.md").read_text()
  assert table.count("\n") == 5 and "| **mean** | |" in table

  # A rerun reuses the finished runs (an interrupted study resumes the same way).
  (tmp_path / "study" / "study.md").unlink()
  again = run_study(config, str(tmp_path / "study"), say=lambda message: None)
  assert again["tasks"] == out["tasks"] and (tmp_path / "study" / "study.md").exists()
