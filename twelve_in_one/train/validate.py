"""Start-up checks of a training config, with messages that name the offending key."""

from __future__ import annotations

import dataclasses
import math

import jax

from twelve_in_one.models.config import ViLBertConfig, get_model_config
from twelve_in_one.tasks.registry import Task, get_task
from twelve_in_one.train import prng, sharding


def resolve_tasks(config) -> list[Task]:
  """The run's tasks from `config.tasks`, with `config.task_settings.<task>` applied."""
  names = [n.strip() for n in str(config.tasks).split(",") if n.strip()]
  if not names:
    raise ValueError("config.tasks is empty; expected comma-separated task names")
  tasks = []
  for name in names:
    task = get_task(name)   # unknown names raise, listing the known ones
    if task.name in [t.name for t in tasks]:
      raise ValueError(f"config.tasks lists {task.name!r} twice")
    if task.name not in config.task_settings:
      raise ValueError(f"config.task_settings has no entry for task {task.name!r}; add "
                       f"--config.task_settings.{task.name}.batch_size=... etc.")
    settings = config.task_settings[task.name]
    changes = {k: settings[k] for k in ("batch_size", "lr", "max_seq_length", "max_region_num",
                                        "num_detected_regions") if k in settings}
    tasks.append(dataclasses.replace(task, **changes))
  return tasks


def run_model_config(config) -> ViLBertConfig:
  """The model config of a run (answer-head sizes aside, which come from the data).

  `config.model.vocab_size` > 0 replaces the preset's vocabulary size, and
  `config.model.dropout` >= 0 replaces all four dropout probabilities (the presets keep
  BERT's 0.1; the small CPU main job trains without dropout, since it sees each example only a
  few times and dropout mostly slows the fit there). `config.model.scan_layers` runs the
  encoder's layers as scans over stacked parameters (`models/scan.py`).
  """
  overrides = {}
  if config.model.vocab_size:
    overrides["vocab_size"] = int(config.model.vocab_size)
  dropout = float(config.model.get("dropout", -1.0))
  if dropout >= 0:
    if dropout >= 1:
      raise ValueError(f"config.model.dropout={dropout}; expected a probability in [0, 1) "
                       "or -1 to keep the preset's")
    overrides.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                     v_hidden_dropout_prob=dropout, v_attention_probs_dropout_prob=dropout)
  return get_model_config(config.model.name, dtype=config.model.dtype,
                          attention_impl=config.model.attention_impl,
                          task_specific_tokens=config.model.task_specific_tokens,
                          remat=config.model.get("remat", False),
                          scan_layers=config.model.get("scan_layers", False), **overrides)


def _positive(key: str, value) -> None:
  """Raises naming `key` unless `value` is a finite number > 0 (NaN included)."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = float("nan")
  if not (math.isfinite(number) and number > 0):
    raise ValueError(f"{key}={value}; expected a positive number")


def validate_values(config, tasks: list[Task]) -> None:
  """Values that would train wrongly or crash later: learning rates (a negative one climbs
  the loss), batch sizes and `log_every` (0 divides by zero) and `checkpoint.keep` (0 deletes
  every checkpoint, the final one included)."""
  _positive("config.optimizer.base_lr", config.optimizer.base_lr)
  _positive("config.optimizer.head_lr", config.optimizer.head_lr)
  for task in tasks:
    _positive(f"config.task_settings.{task.name}.lr", task.lr)
    if not isinstance(task.batch_size, int) or task.batch_size < 1:
      raise ValueError(f"config.task_settings.{task.name}.batch_size={task.batch_size}; "
                       "expected a positive whole number")
  if not isinstance(config.log_every, int) or config.log_every < 1:
    raise ValueError(f"config.log_every={config.log_every}; expected >= 1 (iterations per "
                     "logged line)")
  if config.checkpoint.keep < 1:
    raise ValueError(f"config.checkpoint.keep={config.checkpoint.keep}; expected >= 1 (the "
                     "newest checkpoints kept; 0 would delete them all)")


def validate_config(config, tasks: list[Task], mesh) -> None:
  """Invariants checked before anything is compiled or read."""
  validate_values(config, tasks)
  processes = jax.process_count()
  shards = sharding.data_parallel_size(mesh)
  for task in tasks:
    key = f"config.task_settings.{task.name}.batch_size"
    if task.batch_size % processes:
      raise ValueError(f"{key}={task.batch_size} is not divisible by the {processes} "
                       "processes")
    if task.batch_size % shards:
      raise ValueError(f"{key}={task.batch_size} is not divisible by the {shards} "
                       f"data-parallel devices of the mesh {dict(mesh.shape)}")
    accum = config.optimizer.grad_accum_steps
    if accum < 1 or (task.batch_size // processes) % accum:
      raise ValueError(f"config.optimizer.grad_accum_steps={accum} must divide the "
                       f"per-process batch of task {task.name} ({task.batch_size // processes})")
  if config.get("variant") == "finetune" and not config.init.checkpoint:
    raise ValueError("config variant finetune needs --config.init.checkpoint=PATH (the "
                     "multi-task model, e.g. multi_task_model.bin or a converted directory)")
  prng.resolve_impl(config.get("prng_impl", prng.AUTO))   # raises, naming the choices
  if config.schedule.num_epochs < 1:
    raise ValueError(f"config.schedule.num_epochs={config.schedule.num_epochs}; expected >= 1")
  if config.checkpoint.every_iterations < 1:
    raise ValueError("config.checkpoint.every_iterations must be >= 1")
