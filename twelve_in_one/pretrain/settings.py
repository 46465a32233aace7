"""The settings of a pretraining run, checked with messages that name the config key.

Config keys (configs/pretrain.py): `batch_size` (global), `objective`, `img_weight`,
`optimizer.*` (`PretrainOptimizerConfig`), `schedule.num_epochs`, `schedule.warmup_proportion`,
`model.*` (as in multi-task training, without task tokens), `data.*`, `checkpoint.*`,
`log_every`, `mesh`.

The schedule is the official one: `steps_per_epoch = examples // batch_size` (the official
`int(num_dataset / train_batch_size)`), `total = steps_per_epoch * num_epochs`, and
`WarmupLinearSchedule` over `warmup_proportion * total` warm-up steps. `train_concap.py` calls
`scheduler.step()` before `optimizer.step()`, so update k (1-based) runs at lambda(k): the first
update is already past lambda(0) = 0, and the last one, at lambda(total), is 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ml_collections import config_dict

from twelve_in_one.models.config import ViLBertConfig
from twelve_in_one.models.pretraining import check_pretraining_config
from twelve_in_one.pretrain.losses import OBJECTIVES
from twelve_in_one.pretrain.optimizer import PretrainOptimizerConfig
from twelve_in_one.train import lr_schedule, prng, sharding
from twelve_in_one.train.validate import run_model_config


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Steps of a run and its learning-rate multiplier."""
  steps_per_epoch: int
  num_epochs: int
  warmup_proportion: float

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.num_epochs

  @property
  def warmup_steps(self) -> float:
    return self.warmup_proportion * self.total_steps

  def lr_multiplier(self, step: int) -> float:
    """The multiplier of update `step` (0-based): lambda(step + 1), see the module docstring."""
    return lr_schedule.warmup_linear(step + 1, self.warmup_steps, self.total_steps)

  def epoch_ends_after(self, step: int) -> int | None:
    """The epoch (0-based) that update `step` completes, or None."""
    done = step + 1
    return done // self.steps_per_epoch - 1 if done % self.steps_per_epoch == 0 else None


def _number(key: str, value: Any, ok, expected: str) -> None:
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = float("nan")
  if isinstance(value, bool) or not (math.isfinite(number) and ok(number)):
    raise ValueError(f"{key}={value!r}; expected {expected}")


def _whole(key: str, value: Any, minimum: int, expected: str) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{key}={value!r}; expected {expected}")


def validate_values(config) -> None:
  """Every value that would train wrongly or fail later, before anything is read or written."""
  if config.objective not in OBJECTIVES:
    raise ValueError(f"config.objective={config.objective!r}; expected one of "
                     f"{list(OBJECTIVES)} (0: every label, 1: no masking losses on misaligned "
                     "pairs, 2: no alignment loss and no random captions)")
  if config.init.bert is None:
    raise ValueError(f"config variant {config.get('variant')} needs --config.init.bert=PATH "
                     "(bert-base-uncased: a HF model folder or weights file), as "
                     "train_concap.py starts from it; --config.init.bert='' trains from scratch")
  _number("config.img_weight", config.img_weight, lambda x: x >= 0, "a number >= 0")
  _whole("config.batch_size", config.batch_size, 1, "a positive whole number (the global batch)")
  _whole("config.schedule.num_epochs", config.schedule.num_epochs, 1, "a whole number >= 1")
  _number("config.schedule.warmup_proportion", config.schedule.warmup_proportion,
          lambda x: 0 <= x <= 1, "a proportion in [0, 1]")
  _whole("config.optimizer.grad_accum_steps", config.optimizer.grad_accum_steps, 1,
         "a whole number >= 1")
  _whole("config.log_every", config.log_every, 1, "a whole number >= 1 (steps per logged line)")
  _whole("config.checkpoint.every_steps", config.checkpoint.every_steps, 1,
         "a whole number >= 1")
  _whole("config.checkpoint.keep", config.checkpoint.keep, 1,
         "a whole number >= 1 (0 would delete every checkpoint, the final one included)")
  _whole("config.data.max_seq_length", config.data.max_seq_length, 3,
         "a whole number >= 3 ([CLS], a token and [SEP])")
  _whole("config.data.max_boxes", config.data.max_boxes, 1, "a whole number >= 1")
  _whole("config.data.num_workers", config.data.num_workers, 0, "a whole number >= 0")
  _whole("config.eval_max_batches", config.eval_max_batches, 0,
         "a whole number >= 0 (0: the whole split)")
  if config.data.generate_if_missing:
    for key, minimum in (("num_images", 8), ("num_val_images", 4)):
      value = config.data[key]
      _whole(f"config.data.{key}", value, minimum,
             f"an even whole number >= {minimum} (the generator's scenes per pool)")
      if value % 2:
        raise ValueError(f"config.data.{key}={value}; expected an even whole number >= "
                         f"{minimum} (the generator's scenes per pool)")
  if not str(config.data.train_split):
    raise ValueError("config.data.train_split is empty; expected a prepared split (train)")
  if not config.data.generate_if_missing and not config.data.data_dir:
    raise ValueError("config.data.data_dir is empty; expected the folder `twelve-in-one "
                     "prepare --task conceptual_captions` wrote (or generate_if_missing=True)")
  prng.resolve_impl(config.get("prng_impl", prng.AUTO))   # raises, naming the choices
  optimizer_config(config)


def optimizer_config(config) -> PretrainOptimizerConfig:
  """`config.optimizer` as a PretrainOptimizerConfig (ValueError naming the key)."""
  o = config.optimizer
  values = {}
  for field in dataclasses.fields(PretrainOptimizerConfig):
    value = o[field.name]
    _number(f"config.optimizer.{field.name}", value, lambda x: True, "a number")
    values[field.name] = float(value)
  return PretrainOptimizerConfig(**values)


def model_config(config) -> ViLBertConfig:
  """The pretraining model of `config.model` (no task tokens; vocab and dropout overrides)."""
  view = config_dict.ConfigDict({"model": dict(config.model.to_dict(),
                                               task_specific_tokens=False)})
  result = run_model_config(view)
  check_pretraining_config(result)
  return result


def check_against_corpus(model: ViLBertConfig, layout, location: str) -> None:
  """The model must read the corpus' features and predict its classes and tokens."""
  if model.v_feature_size != layout.feature_dim or model.v_target_size != layout.num_classes:
    raise ValueError(f"config.model.name: the model reads {model.v_feature_size}-d region "
                     f"features and predicts {model.v_target_size} classes, but the corpus at "
                     f"{location} has {layout.feature_dim}-d features and {layout.num_classes} "
                     "classes")
  if model.vocab_size < layout.vocab_size:
    raise ValueError(f"config.model.vocab_size: the model's vocabulary has {model.vocab_size} "
                     f"tokens, but the corpus at {location} was tokenized with "
                     f"{layout.vocab_size} (set --config.model.vocab_size={layout.vocab_size})")
  if model.max_position_embeddings < layout.max_seq_length:
    raise ValueError(f"config.data.max_seq_length={layout.max_seq_length} is more than the "
                     f"model's {model.max_position_embeddings} positions")


def check_batch(config, mesh, process_count: int) -> None:
  """The global batch splits over the processes, the data-parallel devices and the
  accumulation steps."""
  batch, accum = config.batch_size, config.optimizer.grad_accum_steps
  shards = sharding.data_parallel_size(mesh)
  if batch % process_count:
    raise ValueError(f"config.batch_size={batch} is not divisible by the {process_count} "
                     "processes")
  if batch % (shards * accum):
    raise ValueError(f"config.batch_size={batch} is not divisible by the {shards} "
                     f"data-parallel devices of the mesh {dict(mesh.shape)} times "
                     f"config.optimizer.grad_accum_steps={accum}")


def schedule(config, num_train_examples: int) -> Schedule:
  """The run's steps from the corpus size (ValueError when one epoch has no full batch)."""
  steps = num_train_examples // config.batch_size
  if steps < 1:
    raise ValueError(f"config.batch_size={config.batch_size} is larger than the "
                     f"{num_train_examples} training examples: an epoch has no full batch")
  return Schedule(steps, int(config.schedule.num_epochs),
                  float(config.schedule.warmup_proportion))
