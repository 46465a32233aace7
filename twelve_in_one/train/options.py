"""The training options of a config: the optimizer, the learning-rate schedule and the task
schedule's iteration counts, checked with messages that name the key.

Config keys (configs/twelve_in_one.py):

* `optimizer.name`: "adamw" (the official `--optim AdamW`) or "radam";
* `optimizer.unused_params`: "torch1" (the released model's torch 1.x) or "skip";
* `optimizer.freeze`: the official `--freeze` (-1: none);
* `optimizer.vision_scratch`: the official `--vision_scratch`;
* `schedule.lr_scheduler`: one of `lr_schedule.SCHEDULERS`;
* `schedule.train_iter_multiplier`: the official `--train_iter_multiplier`;
* `dsg.train_iter_gap`: the official `--train_iter_gap`.

The model's official JSON config may set `fixed_t_layer` / `fixed_v_layer`; they are read here.
"""

from __future__ import annotations

import json

from twelve_in_one.train import lr_schedule
from twelve_in_one.train import optimizer as opt


def fixed_layers(model_name: str) -> tuple[int, int]:
  """`fixed_t_layer`, `fixed_v_layer` of an official JSON model config (0, 0 for a preset)."""
  if not str(model_name).endswith(".json"):
    return 0, 0
  with open(model_name) as f:
    values = json.load(f)
  out = []
  for key in ("fixed_t_layer", "fixed_v_layer"):
    value = values.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
      raise ValueError(f"{model_name}: {key}={value!r}; expected a whole number of layers")
    out.append(value)
  return out[0], out[1]


def optimizer_config(config, model_config) -> opt.OptimizerConfig:
  """`config.optimizer` as an OptimizerConfig (ValueError naming the key when invalid)."""
  o = config.optimizer
  fixed_t, fixed_v = fixed_layers(config.model.name)
  result = opt.OptimizerConfig(
      name=str(o.get("name", "adamw")).lower(), base_lr=o.base_lr, head_lr=o.head_lr,
      weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
      clip_grad_norm=o.clip_grad_norm, unused_params=o.get("unused_params", "torch1"),
      vision_scratch=bool(o.get("vision_scratch", False)), freeze=int(o.get("freeze", -1)),
      fixed_t_layer=fixed_t, fixed_v_layer=fixed_v)
  opt.check_fixed_layers(result, model_config, str(config.model.name))
  return result


def validate(config, model_config) -> None:
  """Every option of this module, before anything is written or compiled."""
  optimizer_config(config, model_config)
  lr_schedule.check_scheduler(config.schedule.lr_scheduler)
  multiplier = config.schedule.get("train_iter_multiplier", 1.0)
  if not multiplier > 0:
    raise ValueError(f"config.schedule.train_iter_multiplier={multiplier}; expected > 0")
  if config.dsg.train_iter_gap == 0:
    raise ValueError("config.dsg.train_iter_gap=0; expected a whole number of iterations "
                     "(a stopped task trains when iteration % train_iter_gap == 0)")


def learning_rate_schedule(config, total_iterations: int) -> lr_schedule.LearningRateSchedule:
  """The run's multiplier schedule over `total_iterations` (`num_train_optimization_steps`)."""
  return lr_schedule.LearningRateSchedule(
      kind=config.schedule.lr_scheduler,
      warmup_steps=config.schedule.warmup_proportion * total_iterations,
      total_steps=total_iterations, reduce_epochs=tuple(config.dsg.reset_epochs),
      base_lr=config.optimizer.base_lr)
