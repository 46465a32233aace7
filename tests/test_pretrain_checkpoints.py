"""Pretraining checkpoints through `convert` and into a multi-task run's `init.checkpoint`."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import traverse_util
from ml_collections import config_dict

from twelve_in_one.interop.convert import convert_export, convert_import
from twelve_in_one.interop.checkpoint_io import (ARCHITECTURE_KEY, load_params,
                                                 read_official_config, read_state_dict)
from twelve_in_one.interop.names import is_unused_official
from twelve_in_one.models import ViLBertForVLTasks, init_params
from twelve_in_one.train.init_checkpoint import load_init_params


@pytest.fixture(scope="module")
def pretrain_fixture(pretrain_fixture_dir):
  return pretrain_fixture_dir


@pytest.fixture(scope="module")
def imported(pretrain_fixture, tmp_path_factory):
  """The official pretraining state dict imported as a pretraining params checkpoint."""
  folder = tmp_path_factory.mktemp("pretrained") / "ours"
  report = convert_import(str(pretrain_fixture / "pretrain_state_dict.npz"),
                          str(pretrain_fixture / "pretrain_config.json"), str(folder),
                          architecture="pretraining")
  assert f"wrote {folder}" in report
  return folder


def test_import_and_export_round_trip_the_official_pretraining_names(pretrain_fixture,
                                                                      imported, tmp_path):
  params, _, meta = load_params(imported)
  assert meta[ARCHITECTURE_KEY] == "pretraining"
  assert set(params) == {"bert", "cls"}
  text = convert_export(str(imported), str(tmp_path / "export"), "npz")
  assert "state_dict.npz" in text
  exported = dict(np.load(tmp_path / "export" / "state_dict.npz"))
  official = read_state_dict(str(pretrain_fixture / "pretrain_state_dict.npz"))
  assert set(exported) == set(official)
  for name, value in official.items():
    if is_unused_official(name):
      # Never read by the official forward: dropped on import, written back initialised.
      assert exported[name].shape == np.shape(value), name
      continue
    np.testing.assert_array_equal(exported[name], np.asarray(value), err_msg=name)
  config = json.loads((tmp_path / "export" / "config.json").read_text())
  assert config["hidden_size"] == read_official_config(
      pretrain_fixture / "pretrain_config.json").hidden_size


def test_a_pretraining_checkpoint_initialises_the_task_models_backbone(pretrain_fixture,
                                                                       imported):
  pretrained, _, _ = load_params(imported)
  task_config = read_official_config(pretrain_fixture / "pretrain_config.json",
                                     task_specific_tokens=True)
  fresh = jax.tree.map(np.asarray, init_params(ViLBertForVLTasks(task_config),
                                               jax.random.key(0)))
  run = config_dict.ConfigDict(dict(seed=0, init=dict(checkpoint=str(imported), bert="",
                                                      ignore_unexpected=False)))
  params, report = load_init_params(run, task_config, fresh)
  assert "pretrained backbone" in report
  got = traverse_util.flatten_dict(params)
  loaded = traverse_util.flatten_dict(pretrained)
  for key, value in loaded.items():
    np.testing.assert_array_equal(got[key], value, err_msg="/".join(key))
  heads = [key for key in traverse_util.flatten_dict(fresh) if key not in loaded]
  assert any(key[0] == "vil_prediction" for key in heads)
  for key in heads:   # the task heads and task tokens keep their fresh values
    np.testing.assert_array_equal(got[key], traverse_util.flatten_dict(fresh)[key],
                                  err_msg="/".join(key))
