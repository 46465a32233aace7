"""Loading the official fixture into our parameter tree, for tests that need the weights."""

import numpy as np
import jax
from flax import traverse_util

from twelve_in_one.interop.names import official_name
from twelve_in_one.models import ViLBertForVLTasks, init_params
from twelve_in_one.models.config import ViLBertConfig


def fixture_model(fixture_dir, **overrides):
  config = ViLBertConfig.from_json(fixture_dir / "tiny_config.json", **overrides)
  return ViLBertForVLTasks(config)


def official_params(model, state: dict, dtype=np.float32) -> dict:
  """Our tree from a dict of official names -> arrays (rename and transpose)."""
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  flat = {}
  for path in traverse_util.flatten_dict(shapes):
    name, transpose = official_name(path)
    value = np.asarray(state[name], dtype)
    flat[path] = value.T if transpose else value
  return traverse_util.unflatten_dict(flat)


def fixture_batch(fixture_dir, train: dict, prefix: str) -> dict:
  """Task `prefix` of `train.npz` as a batch in our layout (see twelve_in_one/tasks/process.py).

  The fixture stores region features as row indices into `inputs.npz`'s features, -1 selecting
  an appended zero row (its README, "Training fixture").
  """
  inputs = np.load(fixture_dir / "inputs.npz")
  table = np.concatenate([inputs["image_feat"].reshape(-1, 2048),
                          np.zeros((1, 2048), np.float32)])
  get = lambda name: train[f"{prefix}.{name}"]
  batch = dict(input_ids=get("question"), input_mask=get("input_mask"),
               segment_ids=get("segment_ids"), image_feat=table[get("feature_rows")],
               image_loc=get("spatials"), image_mask=get("image_mask"), target=get("target"))
  if f"{prefix}.multiple_choice_ids" in train:
    batch["multiple_choice_ids"] = get("multiple_choice_ids")
  return batch
