"""A tiny version of the README's main job, end to end: generate -> prepare -> train -> table.

Same code path as `twelve-in-one train --config configs/twelve_in_one.py:smoke`, with the tiny
model, a tiny generated release, one iteration and three tasks of different families (answer
classifier, region grounding, image pairs), so the suite stays within its time budget; the
twelve tasks' preparation is covered by tests/data and tests/test_generate.py.
"""

import json

from test_train import _config_module
from twelve_in_one.data.generate import generate
from twelve_in_one.train.entry import run_training


def test_tiny_main_job_end_to_end(tmp_path):
  release = tmp_path / "release"
  generate(release, seed=0, num_images=8, num_val_images=4, num_test_images=4, num_regions=6,
           progress=lambda message: None)
  config = _config_module().get_config("smoke")
  config.model.name = "tiny"
  config.model.vocab_size = 30522   # the data is tokenized with bert-base-uncased
  config.data.release_dir = str(release)
  config.schedule.num_epochs = 1
  config.schedule.iterations_per_epoch = 1
  config.eval_during_training = False
  config.compilation_cache_dir = ""
  config.tasks = "vqa,refcoco,nlvr2"
  for name in config.task_settings:
    settings = config.task_settings[name]
    settings.batch_size = 8
    settings.num_detected_regions = 7       # 6 boxes + the global region
    settings.max_region_num = {"visual7w": 13, "guesswhat_pointing": 14}.get(name, 7)
  result = run_training(config, str(tmp_path / "work"))

  table = json.loads((tmp_path / "work" / "results.json").read_text())
  assert set(table) == set(result.results) == {"vqa", "refcoco", "nlvr2"}
  for name, row in table.items():
    assert 0.0 <= row["score"] <= 1.0 and row["examples"] > 0, name
    assert 0.0 < row["chance"] < 1.0, name   # the generator's chance levels annotate the table
  markdown = (tmp_path / "work" / "results.md").read_text()
  assert markdown.count("\n") == 5 and "| vqa | soft accuracy |" in markdown
  assert all(count == 1 for count in result.compilations.values())
