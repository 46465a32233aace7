"""`twelve-in-one forward`: every task's forward pass and loss on random inputs.

    twelve-in-one forward --model=tiny
    twelve-in-one forward --model=base --tasks=vqa,refcoco --batch_size=2

A smoke test of the model and the task registry: builds the model, compiles one step per task
with the task's official shapes (text length, regions, options, image pairs) and prints the
output shape, loss and score of each.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import flags

from twelve_in_one.models import ViLBertForVLTasks, get_model_config, init_params
from twelve_in_one.tasks import TWELVE_TASKS, get_tasks
from twelve_in_one.tasks.examples import random_batch
from twelve_in_one.train.objective import task_outputs

_MODEL = flags.DEFINE_string("model", "tiny", "model preset (tiny, small, base) or official JSON")
_TASKS = flags.DEFINE_list("tasks", list(TWELVE_TASKS), "tasks to run")
_BATCH = flags.DEFINE_integer("batch_size", 2, "examples per task batch")
_SEED = flags.DEFINE_integer("seed", 0, "parameter and input seed")


def run_forward(model_name: str, task_names: list[str], batch_size: int, seed: int) -> list[dict]:
  """Runs each task's head on a random batch; returns one result row per task."""
  config = get_model_config(model_name)
  model = ViLBertForVLTasks(config)
  params = init_params(model, jax.random.key(seed))
  rows = []
  for task in get_tasks(task_names):
    batch = random_batch(task, batch_size, seed=seed, vocab_size=config.vocab_size,
                         feature_size=config.v_feature_size)

    @jax.jit
    def step(params, batch, task=task):
      outputs = task_outputs(model.apply, params, task, batch)
      return outputs[task.output], task.head.loss(outputs, batch, task), \
          task.head.score(outputs, batch, task).mean()

    start = time.perf_counter()
    output, loss, score = jax.block_until_ready(step(params, batch))
    rows.append(dict(task=task.name, task_id=task.task_id, output=task.output,
                     shape=tuple(output.shape), loss=float(loss), score=float(score),
                     seconds=time.perf_counter() - start))
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"task {task.name}: non-finite loss {float(loss)}")
  return rows


def main(argv):
  del argv
  rows = run_forward(_MODEL.value, _TASKS.value, _BATCH.value, _SEED.value)
  print(f"{'task':<20} {'id':>3} {'output':<22} {'shape':<16} {'loss':>10} {'score':>6} "
        f"{'s':>6}")
  for row in rows:
    print(f"{row['task']:<20} {row['task_id']:>3} {row['output']:<22} {str(row['shape']):<16} "
          f"{row['loss']:>10.4f} {row['score']:>6.3f} {row['seconds']:>6.2f}")
