"""The Task registry, head types, losses and metrics. Read by the model, data and trainer."""

from twelve_in_one.tasks.heads import HEAD_TYPES, HeadType, get_head_type
from twelve_in_one.tasks.process import model_inputs
from twelve_in_one.tasks.registry import (TASKS, TWELVE_TASKS, Task, get_task, get_tasks,
                                          loss_scale, task_by_id)
