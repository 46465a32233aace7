"""Where a training step's time goes: one traced step, its ops grouped by what they compute.

    .venv/bin/python benchmarks/step_profile.py [--batch=8] [--task=vqa] [--config=base]
        [--prng_impl=auto] [--inference]

Compiles the trainer's step (`make_train_step`, state donated; or with `--inference` the
task's forward) on random batches of the task's shapes, runs it twice, then traces one step
with `jax.profiler` (a Perfetto trace, which XLA:CPU fills with one event per executed
thunk). Each thunk's HLO instruction is looked up in the compiled module for its `op_name`
metadata (the JAX source of the op: module path, primitive, forward or `transpose(...)` for the
backward), and the thunks' durations are summed by group: GEMMs of the dense layers (forward,
backward), attention's batched matmuls, the dropout's random bits and masks, LayerNorm, GELU,
softmax, the optimizer update, and the rest by fusion kind.

Durations are *op time*: XLA:CPU runs independent thunks concurrently on its two threads, so
the groups add up to more than the step's wall time, which is printed too. The numbers are for
comparing levers within one machine, not for adding up.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp

from process_stats import fmt_table   # a sibling in benchmarks/
from twelve_in_one.models import ViLBertForVLTasks, get_model_config, init_params
from twelve_in_one.tasks import get_task
from twelve_in_one.tasks.examples import random_batch
from twelve_in_one.train import optimizer as opt
from twelve_in_one.train import prng
from twelve_in_one.train.objective import task_outputs
from twelve_in_one.train.steps import StepSettings, create_state, make_train_step

_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]+)"',
                          re.M)


def group_of(thunk: str, op_name: str) -> str:
  """The group a thunk's time is counted in, from its name and its op's JAX source."""
  backward = "transpose(" in op_name
  if "rng_bit_generator" in op_name or "_bernoulli" in op_name or "random_bits" in op_name:
    return "dropout: random bits"
  if "Dropout" in op_name:
    return "dropout: mask and scale" + (" (backward)" if backward else "")
  if thunk.startswith(("ynn_fusion", "dot")):
    if "bqhd" in op_name or "bhqk" in op_name:
      return "attention matmuls" + (" (backward)" if backward else "")
    return "dense GEMMs" + (" (backward)" if backward else "")
  for part in ("LayerNorm", "softmax", "erf"):
    if part in op_name:
      return {"erf": "GELU"}.get(part, part) + (" (backward)" if backward else "")
  if op_name.startswith("jit(step)/") and "ViLBertForVLTasks" not in op_name:
    return "optimizer update, loss, metrics"
  return "other: " + re.sub(r"\.\d+$", "", thunk)


def traced_op_times(compiled, run) -> tuple[dict[str, float], dict[str, int], float]:
  """Runs `run()` under the profiler; returns op time and thunk count per group, and wall."""
  op_names = dict(_INSTRUCTION.findall(compiled.as_text()))
  trace_dir = tempfile.mkdtemp(prefix="step_profile_")
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  start = time.perf_counter()
  run()
  wall = time.perf_counter() - start
  jax.profiler.stop_trace()
  path = sorted(glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True))[-1]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  times, counts = collections.Counter(), collections.Counter()
  for event in events:
    name = event.get("name", "")
    if (event.get("ph") != "X" or name not in op_names or
        not threads.get((event["pid"], event["tid"]), "").startswith("tf_XLAEigen")):
      continue   # only the thunks of the compiled step, on XLA's worker threads
    group = group_of(name, op_names[name])
    times[group] += event["dur"] / 1e6
    counts[group] += 1
  return times, counts, wall


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--task", default="vqa")
  parser.add_argument("--config", default="base")
  parser.add_argument("--prng_impl", default=prng.AUTO, choices=prng.CHOICES)
  parser.add_argument("--inference", action="store_true", help="the forward only")
  args = parser.parse_args()

  cfg = get_model_config(args.config)
  model, task = ViLBertForVLTasks(cfg), get_task(args.task)
  batch = jax.device_put(random_batch(
      task, args.batch, vocab_size=cfg.vocab_size, feature_size=cfg.v_feature_size,
      num_vqa_answers=cfg.num_vqa_answers, num_gqa_answers=cfg.num_gqa_answers))
  params = jax.jit(lambda key: init_params(model, key))(jax.random.key(0))
  if args.inference:
    forward = jax.jit(lambda p, b: task_outputs(model.apply, p, task, b)[task.output])
    compiled = forward.lower(params, batch).compile()
    run = lambda: compiled(params, batch).block_until_ready()
  else:
    settings = StepSettings(opt.OptimizerConfig())
    step = jax.jit(make_train_step(model.apply, task, settings), donate_argnums=(0,))
    key, lr = prng.dropout_key(0, args.prng_impl), jnp.float32(1.0)
    holder = {"state": jax.jit(create_state, donate_argnums=0)(params)}
    compiled = step.lower(holder["state"], batch, key, lr).compile()

    def run():
      holder["state"], metrics = compiled(holder["state"], batch, key, lr)
      jax.block_until_ready((holder["state"], metrics))

  for _ in range(2):   # warm-up: first-touch page faults, thread pools
    run()
  times, counts, wall = traced_op_times(compiled, run)
  what = "forward" if args.inference else "training step"
  print(f"{args.task} {what}, batch {args.batch}, {args.config}, dropout keys "
        f"{args.prng_impl}: wall {wall:.3f} s, op time {sum(times.values()):.3f} s over "
        f"{sum(counts.values())} thunks")
  total = sum(times.values())
  rows, rest, rest_count, rest_kinds = [], 0.0, 0, 0
  for group, seconds in times.most_common():
    if seconds >= 0.005 * total:
      rows.append([group, f"{seconds:.3f}", counts[group], f"{100 * seconds / total:.1f}%"])
    else:
      rest, rest_count, rest_kinds = rest + seconds, rest_count + counts[group], rest_kinds + 1
  if rest_kinds:
    rows.append([f"{rest_kinds} smaller groups (< 0.5% each)", f"{rest:.3f}", rest_count,
                 f"{100 * rest / total:.1f}%"])
  print(fmt_table(["group", "op time s", "thunks", "share"], rows))


if __name__ == "__main__":
  main()
