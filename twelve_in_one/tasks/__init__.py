"""The Task registry, head types, losses and metrics. Read by the model, data and trainer.

The registry is plain data and is imported here at once; the jax parts (head types' losses
and scores, the batch-to-model-inputs reshapes) load on first use, so importing the registry
(`twelve_in_one.tasks.registry`, or the names below) never imports jax.
"""

import importlib

from twelve_in_one.tasks.registry import (HEAD_SPECS, TASKS, TWELVE_TASKS, HeadSpec, Task,
                                          get_task, get_tasks, loss_scale, register_task,
                                          registered_task, task_by_id, unregister_task)

# Names of the jax-side modules, loaded on first access.
_LAZY = {"HEAD_TYPES": "head_types", "HeadType": "head_types", "get_head_type": "head_types",
         "model_inputs": "process"}

__all__ = ["HEAD_SPECS", "TASKS", "TWELVE_TASKS", "HeadSpec", "Task", "get_task", "get_tasks",
           "loss_scale", "register_task", "registered_task", "task_by_id", "unregister_task",
           *_LAZY]


def __getattr__(name: str):
  if name in _LAZY:
    module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
    return getattr(module, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
