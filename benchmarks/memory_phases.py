"""Where a training process's resident memory goes, phase by phase (Linux `/proc/self/status`).

    .venv/bin/python benchmarks/memory_phases.py [--config=base] [--batch=8] [--steps=2]
        [--remat=none]
        [--override=num_hidden_layers=6 --override=t_biattention_id=[0,1,2,3,4,5]] [--compile_only]

Compiles the VQA training step from the state's shapes (as the trainer does), then makes the
state the way the trainer makes it, printing VmRSS (now) and VmHWM (peak since the last reset)
after each phase: lowering, compile, `malloc_trim`, parameters, moments, and the timed steps
(`--compile_only` stops after the trim, which leaves the executable's own memory). For
comparison it also prints the peak of the one-program init (parameters and moments together)
that the trainer used before. XLA's `memory_analysis()` of the step gives the argument,
output, alias and temporary sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp

from process_stats import reset_peak_rss   # siblings in benchmarks/
from step_setup import donated_train_step
from twelve_in_one import hostmem
from twelve_in_one.models import ViLBertConfig, ViLBertForVLTasks, get_model_config, init_params
from twelve_in_one.tasks import get_task
from twelve_in_one.tasks.examples import random_batch
from twelve_in_one.train import prng
from twelve_in_one.train.steps import create_state


def status_gib() -> tuple[float, float]:
  values = {}
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(("VmRSS:", "VmHWM:")):
        key, amount, _ = line.split()
        values[key[:-1]] = int(amount) / 2**20
  return values["VmRSS"], values["VmHWM"]


def report(phase: str) -> None:
  rss, peak = status_gib()
  print(f"{phase:<44} RSS {rss:5.2f} GiB   peak since last reset {peak:5.2f} GiB", flush=True)
  reset_peak_rss()


def parse_overrides(items: list[str]) -> dict:
  """`FIELD=VALUE` strings as model config overrides: VALUE as JSON where it parses (6,
  [0,1,2], true), else as a plain string (all). An unknown or malformed field is named."""
  fields = {field.name for field in dataclasses.fields(ViLBertConfig)}
  overrides = {}
  for item in items:
    field, sep, value = item.partition("=")
    if not sep or field not in fields:
      raise SystemExit(f"--override {item!r}: expected FIELD=VALUE with FIELD one of the model "
                       f"config's fields ({', '.join(sorted(fields))})")
    try:
      overrides[field] = json.loads(value)
    except json.JSONDecodeError:
      overrides[field] = value
  return overrides


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="base")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--remat", default="none",
                      help="config.model.remat: none, all, or a subset of text,visual,coattention")
  parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                      help="a model config field and its value (JSON, else a string), e.g. "
                           "num_hidden_layers=6 "
                           "(repeatable): how the executable grows with the layers")
  parser.add_argument("--compile_only", action="store_true",
                      help="stop after the compile: the executable's own resident memory")
  args = parser.parse_args()

  # `--override=remat=...` is the same field as `--remat`; the override wins.
  overrides = {"remat": args.remat, **parse_overrides(args.override)}
  model = ViLBertForVLTasks(get_model_config(args.config, **overrides))
  task = get_task("vqa")
  batch = jax.device_put(random_batch(task, args.batch))
  step, abstract_state = donated_train_step(model, task)
  key, lr = prng.dropout_key(0, prng.COUNTER_HASH), jnp.float32(1.0)
  hostmem.release_free_memory()
  report("imported, model and batch made")
  lowered = step.lower(abstract_state, batch, key, lr)
  report("lowered the step")
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  del lowered
  report(f"compiled the step ({compile_s:.1f} s)")
  memory = compiled.memory_analysis()
  print("XLA memory_analysis of the step, GiB: arguments "
        f"{memory.argument_size_in_bytes / 2**30:.2f}, outputs "
        f"{memory.output_size_in_bytes / 2**30:.2f}, aliased "
        f"{memory.alias_size_in_bytes / 2**30:.2f}, temporaries "
        f"{memory.temp_size_in_bytes / 2**30:.2f}")
  hostmem.release_free_memory()
  report("malloc_trim")
  print(f"optimized HLO: {compiled.as_text().count(chr(10)):,} lines")
  if args.compile_only:
    return

  one_program = jax.jit(lambda k: create_state(init_params(model, k)))(jax.random.key(0))
  jax.block_until_ready(one_program)
  report("one-program init (the former trainer's)")
  del one_program
  hostmem.release_free_memory()
  report("dropped it, malloc_trim")

  params = jax.jit(lambda k: init_params(model, k))(jax.random.key(0))
  jax.block_until_ready(params)
  hostmem.release_free_memory()
  report("parameters (program 1), malloc_trim")
  state = jax.jit(create_state, donate_argnums=0)(params)
  jax.block_until_ready(state)
  hostmem.release_free_memory()
  report("moments (program 2), malloc_trim")
  for index in range(args.steps):
    state, metrics = compiled(state, batch, jax.random.fold_in(key, index), lr)
    jax.block_until_ready((state, metrics))
  report(f"{args.steps} training steps, batch {args.batch}")


if __name__ == "__main__":
  main()
