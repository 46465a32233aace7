"""Initial parameters for a run: an official / exported state dict, our orbax params, or BERT.

`config.init.checkpoint` may be
* an official PyTorch `.bin` / `.pt`, a `.npz` or `.safetensors` with the official names (e.g.
  `pretrained_model.bin` for multi-task training, `multi_task_model.bin` for fine-tuning); the
  heads and task tokens missing from it are initialised as the official code does;
* a directory written by `twelve-in-one convert` or `interop.checkpoint_io.save_params`.

`config.init.bert` loads a HF BERT (file or model directory) into the text stream and the
masked-LM head first, as the official training starts from bert-base-uncased.

Both may be local or on Cloud Storage (`gs://...`); a missing bucket, file or folder is one
line naming the setting and the location, before anything is read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from etils import epath
from flax import traverse_util

from twelve_in_one import paths
from twelve_in_one.interop import bert as bert_io
from twelve_in_one.interop import checkpoint_io, official
from twelve_in_one.models import scan
from twelve_in_one.models.config import ViLBertConfig


def load_init_params(config, model_config: ViLBertConfig, params: Any) -> tuple[Any, str]:
  """(parameters, report text) after applying `config.init` to the freshly initialised ones.

  Raises:
    paths.LocationError: a missing bucket, file or folder (named with its config key).
  """
  reports = []
  params = jax_to_numpy(params)
  if config.init.bert:
    _check_exists(config.init.bert, "config.init.bert", "a HF BERT weights file or model folder")
    params, report = bert_io.load_bert_checkpoint(config.init.bert, model_config,
                                                  params=params)
    reports.append(report.format())
  path = config.init.checkpoint
  if path:
    location = _check_exists(path, "config.init.checkpoint", _CHECKPOINT_KINDS)
    # epath, not os.path: on a bucket a folder is a prefix, which os.path never sees.
    if location.is_dir():
      loaded, saved_config, meta = checkpoint_io.load_params(path)
      # A folder saved by a run with the other `scan_layers` setting holds the same layers
      # stacked (or per layer): bring it to this run's layout before comparing shapes.
      loaded = scan.to_layout(loaded, model_config)
      if checkpoint_io.architecture_of(meta) == "pretraining":
        params = _with_pretrained(params, loaded, path)
        reports.append(f"{path}: loaded the pretrained backbone and cls heads (model "
                       f"{saved_config.hidden_size}-wide); task heads and tokens keep their "
                       "fresh initialisation")
      else:
        _check_same_shapes(loaded, params, path)
        params = loaded
        reports.append(f"{path}: loaded our checkpoint (model {saved_config.hidden_size}-wide)")
    else:
      state = checkpoint_io.read_state_dict(path)
      params, report = official.import_official(
          state, model_config, allow_unexpected=config.init.ignore_unexpected, rng=config.seed,
          source=path)
      reports.append(report.format())
  return params, "\n".join(reports)


_CHECKPOINT_KINDS = ("an official .bin/.pt, .npz or .safetensors state dict, or a folder "
                     "written by `twelve-in-one convert`")


def _check_exists(location: str, key: str, expected: str) -> epath.Path:
  """`location` as an epath; LocationError naming `key` when its bucket or itself is missing."""
  paths.check_bucket(location, key)
  path = paths.as_path(location)
  if not path.exists():
    raise paths.LocationError(f"{key} {location}: no such file or folder; expected {expected}")
  return path


def jax_to_numpy(tree: Any) -> Any:
  flat = traverse_util.flatten_dict(tree)
  return traverse_util.unflatten_dict({k: np.asarray(v) for k, v in flat.items()})


def _with_pretrained(params: Any, pretrained: Any, path: str) -> Any:
  """`params` with every parameter of a pretraining checkpoint put in at its path.

  The pretraining model's tree is the task model's `bert` and `cls` part (the official
  `BertForMultiModalPreTraining` names), so each of its parameters has the same path and
  shape in the task model; the task heads and the task-token embedding are the task model's.
  """
  flat = traverse_util.flatten_dict(params)
  for key, value in traverse_util.flatten_dict(pretrained).items():
    name = "/".join(key)
    if key not in flat:
      raise ValueError(f"{path}: pretraining parameter {name} is not a parameter of the "
                       "configured task model")
    if np.shape(value) != np.shape(flat[key]):
      raise ValueError(f"{path}: parameter {name} has shape {np.shape(value)}, the configured "
                       f"model expects {np.shape(flat[key])}")
    flat[key] = value
  return traverse_util.unflatten_dict(flat)


def _check_same_shapes(loaded: Any, expected: Any, path: str) -> None:
  got = {k: np.shape(v) for k, v in traverse_util.flatten_dict(loaded, sep="/").items()}
  want = {k: np.shape(v) for k, v in traverse_util.flatten_dict(expected, sep="/").items()}
  if got.keys() != want.keys():
    raise ValueError(f"{path}: parameters differ from the configured model: missing "
                     f"{sorted(want.keys() - got.keys())[:5]}, unexpected "
                     f"{sorted(got.keys() - want.keys())[:5]}")
  for key in want:
    if got[key] != want[key]:
      raise ValueError(f"{path}: parameter {key} has shape {got[key]}, the configured model "
                       f"expects {want[key]}")
