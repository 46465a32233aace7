"""`config.model.scan_layers` through the commands: config, init checkpoints, prediction maps."""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
import pytest
from flax import traverse_util
from ml_collections import config_dict

from twelve_in_one.evaluate.predict import last_text_to_image
from twelve_in_one.interop.checkpoint_io import save_params
from twelve_in_one.models import ViLBertForVLTasks, init_params, scan, tiny_config
from twelve_in_one.tasks import get_task, model_inputs
from twelve_in_one.tasks.examples import random_batch
from twelve_in_one.train.init_checkpoint import load_init_params
from twelve_in_one.train.validate import run_model_config

CONFIG_FILE = os.path.join(os.path.dirname(__file__), "..", "configs", "twelve_in_one.py")
# The released 6/6 layout in miniature, so the co-attention blocks form a real stack.
RELEASED = tiny_config(num_hidden_layers=6, t_biattention_id=(3, 4, 5),
                       v_biattention_id=(0, 1, 2))


def _config_module():
  spec = importlib.util.spec_from_file_location("twelve_in_one_config_scan", CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_accelerator_variants_scan_and_cpu_variants_unroll():
  module = _config_module()
  for variant in ("twelve_in_one", "single:vqa", "finetune:refcoco"):
    config = module.get_config(variant)
    assert config.model.scan_layers is True, variant
  for variant in ("smoke", "tiny"):
    config = module.get_config(variant)
    assert config.model.scan_layers is False, variant
    assert run_model_config(config).scan_layers is False, variant
  config = module.get_config("tiny")
  config.model.scan_layers = True
  assert run_model_config(config).scan_layers is True


def _init_config(checkpoint: str) -> config_dict.ConfigDict:
  return config_dict.ConfigDict(dict(
      seed=0, init=dict(checkpoint=checkpoint, bert="", ignore_unexpected=False)))


@pytest.mark.parametrize("saved_scanned", [False, True], ids=["unrolled_saved",
                                                              "scanned_saved"])
def test_init_checkpoint_folder_is_brought_to_the_runs_layout(tmp_path, saved_scanned):
  """A folder saved with one `scan_layers` setting initialises a run with the other."""
  unrolled = jax.tree.map(np.asarray, init_params(ViLBertForVLTasks(RELEASED),
                                                  jax.random.key(3)))
  saved_config = RELEASED.replace(scan_layers=saved_scanned)
  saved = scan.to_scanned(unrolled, RELEASED) if saved_scanned else unrolled
  folder = save_params(tmp_path / "exported", saved, saved_config)

  run_config = RELEASED.replace(scan_layers=not saved_scanned)
  fresh = init_params(ViLBertForVLTasks(run_config), jax.random.key(4))
  loaded, report = load_init_params(_init_config(folder), run_config, fresh)

  expected = unrolled if saved_scanned else scan.to_scanned(unrolled, RELEASED)
  assert scan.is_scanned(loaded, RELEASED) is (not saved_scanned)
  want = traverse_util.flatten_dict(expected, sep="/")
  got = traverse_util.flatten_dict(loaded, sep="/")
  assert got.keys() == want.keys()
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  assert "loaded our checkpoint" in report


def test_prediction_attention_map_is_the_same_in_both_layouts():
  """`predict --attention` reads the last block's map whether or not the layers are scanned."""
  task = get_task("vqa")
  batch = random_batch(task, 2, vocab_size=RELEASED.vocab_size,
                       feature_size=RELEASED.v_feature_size,
                       num_vqa_answers=RELEASED.num_vqa_answers,
                       num_gqa_answers=RELEASED.num_gqa_answers)
  inputs = dict(model_inputs(task, batch), task_ids=task.task_id)
  params = init_params(ViLBertForVLTasks(RELEASED), jax.random.key(0))
  maps = {}
  for scanned in (False, True):
    config = RELEASED.replace(scan_layers=scanned)
    tree = scan.to_scanned(params, RELEASED) if scanned else params
    _, state = ViLBertForVLTasks(config).apply({"params": tree}, **inputs,
                                                mutable=["intermediates"])
    maps[scanned] = last_text_to_image(state["intermediates"], config)
  assert maps[False].shape == (2, task.max_seq_length + 1, task.max_region_num)
  # Each row is a head-averaged softmax over the regions.
  np.testing.assert_allclose(maps[False].sum(-1), 1.0, rtol=1e-5)
  # The scan changes only how XLA orders float32 operations.
  np.testing.assert_allclose(maps[True], maps[False], rtol=1e-5, atol=1e-6)


def test_workdir_checkpoint_is_read_in_the_layout_it_was_trained_in(tmp_path):
  """Evaluating a `scan_layers` run with a config that does not say so still reads it."""
  import types

  from twelve_in_one.evaluate.restore import load_model
  from twelve_in_one.train.checkpoint import Checkpointer

  module = _config_module()
  run_config = module.get_config("tiny")
  run_config.model.scan_layers = True
  model_config = run_model_config(run_config)
  params = jax.tree.map(np.asarray, init_params(ViLBertForVLTasks(model_config),
                                                jax.random.key(5)))
  state = types.SimpleNamespace(step=np.int32(7), params=params, opt_state={})
  checkpointer = Checkpointer(str(tmp_path / "run"), asynchronous=False)
  checkpointer.save(7, state, {"iteration": 7}, wait=True)
  checkpointer.close()

  eval_config = module.get_config("tiny")          # scan_layers False: the CPU default
  loaded = load_model(str(tmp_path / "run"), eval_config)
  assert loaded.config.scan_layers is True and loaded.iteration == 7
  got = traverse_util.flatten_dict(jax.tree.map(np.asarray, loaded.params), sep="/")
  for name, value in traverse_util.flatten_dict(params, sep="/").items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
