"""Run configs and parameter views shared by the training, cloud and evaluation tests."""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
from flax import traverse_util

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_module():
  """`configs/twelve_in_one.py` loaded as a module (configs/ is not a package)."""
  spec = importlib.util.spec_from_file_location(
      "twelve_in_one_config", os.path.join(REPO, "configs", "twelve_in_one.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config_dict(tasks: str = "vqa,refcoco,nlvr2", **changes):
  """The `tiny` run config for `tasks`, with dotted-key `changes` applied."""
  config = config_module().get_config("tiny")
  config.tasks = tasks
  config.checkpoint.asynchronous = True
  for key, value in changes.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def tiny_run_config(tasks: str):
  """The `tiny` run config for `tasks`, otherwise as the config file gives it."""
  config = config_module().get_config("tiny")
  config.tasks = tasks
  return config


def flat_params(params) -> dict[str, np.ndarray]:
  """`"a/b/kernel" -> numpy array` for every leaf of a (device) parameter tree."""
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(
      jax.device_get(params)).items()}
