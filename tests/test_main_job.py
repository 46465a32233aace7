"""A tiny version of the README's main job, end to end: generate -> prepare -> pretrain ->
train -> table.

Same code path as `twelve-in-one train --config configs/twelve_in_one.py:smoke`, with the tiny
model, a tiny generated release, one iteration and two tasks of different families (answer
classifier, region grounding), so the suite stays within its time budget: the study's
multi-task arm then runs the very steps the end-to-end run compiled. The twelve tasks'
preparation is covered by tests/data and tests/test_generate.py.
"""

import json

import flax
import jax
import numpy as np
import pytest

from run_configs import config_module
from twelve_in_one.data.generate import generate
from twelve_in_one.interop import checkpoint_io
from twelve_in_one.train.entry import run_training


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """A tiny generated release, shared by the tests of this file."""
  folder = tmp_path_factory.mktemp("main_job") / "release"
  generate(folder, seed=0, num_images=8, num_val_images=4, num_test_images=4, num_regions=6,
           pretraining_corpus=True, progress=lambda message: None)
  return folder


def _tiny_smoke_config(release, tasks: str, iterations: int):
  """The smoke config on the tiny generated release, with the tiny model and batches of 8; the
  pretraining phase (on, as in the main job) one epoch of the tiny model over its corpus."""
  config = config_module().get_config("smoke")
  config.model.name = "tiny"
  config.model.vocab_size = 30522   # the data is tokenized with bert-base-uncased
  pretraining = config.pretraining
  assert pretraining.enabled
  pretraining.model.name = "tiny"
  pretraining.model.vocab_size = 30522
  pretraining.batch_size = 8
  pretraining.schedule.num_epochs = 1
  pretraining.data.max_boxes = 6
  pretraining.compilation_cache_dir = ""
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

  # The tasks trained from the pretraining phase's export: the pretraining heads, which no
  # task's loss reaches, are still exactly the pretrained ones, and not a fresh initialisation.
  exported, _, meta = checkpoint_io.load_params(str(tmp_path / "work" / "pretrain" / "pretrained"))
  # One caption per training scene of the three pools (8 each), in batches of 8: 3 steps.
  assert meta["steps"] == 3 and meta["seed"] == config.seed
  trained = flax.traverse_util.flatten_dict(jax.device_get(result.state.params), sep="/")
  heads = {key: value for key, value in flax.traverse_util.flatten_dict(
      exported, sep="/").items() if key.startswith("cls/")}
  assert heads
  for key, value in heads.items():
    np.testing.assert_array_equal(trained[key], value, err_msg=key)
  # A fresh initialisation's biases are zeros; the pretraining's update moved them.
  assert any(np.any(value != 0) for key, value in heads.items() if key.endswith("bias"))

  # A rerun finds both phases finished and recomputes nothing.
  again = run_training(config, str(tmp_path / "work"))
  assert again.results == result.results and not any(again.compilations.values())

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
    # The third arm: the multi-task run again, from the study's own pretraining.
    pretrained = json.loads(
        (tmp_path / "study" / "multi_task_pretrained" / "results.json").read_text())
    assert row["pretrained"] == pretrained[name]["score"]
  assert (tmp_path / "study" / "pretrain" / "pretrained" / checkpoint_io.META_FILE).exists()
  mean_single = (rows["vqa"]["single"] + rows["refcoco"]["single"]) / 2
  assert abs(out["mean"]["single"] - mean_single) < 1e-12
  table = (tmp_path / "study" / "study.md").read_text()
  assert table.count("\n") == 5 and "| **mean** | |" in table
  assert "| multi-task, pretrained | pretrained − single |" in table.splitlines()[0]

  # A rerun reuses the finished runs (an interrupted study resumes the same way).
  (tmp_path / "study" / "study.md").unlink()
  again = run_study(config, str(tmp_path / "study"), say=lambda message: None)
  assert again["tasks"] == out["tasks"] and (tmp_path / "study" / "study.md").exists()


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.init, "checkpoint", "/data/pretrained_model.bin"),
     "config.init.checkpoint and config.pretraining.enabled are both set"),
    (lambda c: setattr(c.init, "bert", "/data/bert-base-uncased"),
     "config.init.bert is set, but the tasks start from the pretraining phase.s export"),
    (lambda c: setattr(c.pretraining.model, "name", "tiny"),
     "config.pretraining.model.name='tiny' differs from config.model.name='small'"),
])
def test_a_run_that_pretrains_first_refuses_settings_it_would_ignore(change, message, tmp_path):
  config = config_module().get_config("smoke")
  change(config)
  with pytest.raises(ValueError, match=message):
    run_training(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()   # refused before anything is generated or written


def test_the_pretraining_phase_takes_the_runs_seed():
  config = config_module().get_config("smoke")
  config.seed = 7
  assert config.pretraining.seed == 7
  assert not config_module().get_config("twelve_in_one").pretraining.enabled
