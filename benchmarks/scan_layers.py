"""The training step's program and memory: unrolled or scanned layers, remat, phase by phase.

    .venv/bin/python benchmarks/scan_layers.py [--config=base] [--task=vqa] [--batch=8]
        [--steps=3] [--remat=none,all] [--forms=unrolled,scanned] [--rounds=1]
        [--compile_only] [--phases] [--one_program_init]
        [--override=FIELD=VALUE ...] [--json_out=FILE]

For each `--remat` choice (`config.model.remat`: none, all, or kinds joined with '+', e.g.
text+coattention) and each form (`config.model.scan_layers` off, on), a fresh process
compiles the trainer's real step for the task (`step_setup.donated_train_step`: forward with
dropout, the task loss, backward and the reference AdamW, the state donated) from the state's
shapes, as the trainer does, then makes the state as the trainer makes it (parameters, then
moments, from two programs, the allocator trimmed after each) and runs one untimed and
`--steps` timed steps on a random batch of the task's official shapes. It prints:

* lower and compile seconds (XLA's compile alone is the "compile" figure);
* the executable: the optimized HLO's lines, the serialized executable's size, and its resident
  memory (RSS after the compile and `malloc_trim` minus RSS after lowering);
* XLA's `memory_analysis()`: the arguments (parameters, moments, batch) and the temporaries;
* the GEMM FLOPs per example in the compiled HLO (unrolled form only: a dot inside a loop
  would be counted once), which grow by one forward of each recomputed layer kind;
* the median step time and the process's peak RSS (compile, state and steps).

`--compile_only` stops after the compile (no state, no steps): the remat choices' costs in a
fraction of the time. `--phases` also prints each process's resident memory after every phase
and its peak since the phase before (Linux `/proc/self/status`); `--one_program_init` makes
the state in one program instead of two, to see the peak that split avoids. `--override`
changes a model config field in every process (JSON values, e.g.
`--override=num_hidden_layers=6 --override=t_biattention_id=[0,1,2,3,4,5]`), to see how the
executable grows with the layers.

The forms alternate within each round, so a drift of the shared machine hits both alike; every
process runs with glibc's huge pages, as `twelve-in-one train` runs on the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# Siblings in benchmarks/ (a script's own folder is on sys.path).
from process_stats import (
  child_env,
  fmt_table,
  peak_rss_gib,
  peak_rss_since_reset_gib,
  reset_peak_rss,
  rss_gib,
)

FORMS = {"unrolled": False, "scanned": True}
# Fields the script sets itself, per measurement.
_NOT_OVERRIDABLE = ("remat", "scan_layers")


def parse_overrides(items: list[str]) -> dict:
  """`FIELD=VALUE` strings as model config overrides: VALUE as JSON where it parses (6,
  [0,1,2], true), else as a plain string. An unknown or malformed field is named."""
  import dataclasses

  from twelve_in_one.models import ViLBertConfig
  fields = {field.name for field in dataclasses.fields(ViLBertConfig)}
  overrides = {}
  for item in items:
    field, sep, value = item.partition("=")
    if not sep or field not in fields or field in _NOT_OVERRIDABLE:
      allowed = ", ".join(sorted(fields - set(_NOT_OVERRIDABLE)))
      raise SystemExit(f"--override {item!r}: expected FIELD=VALUE with FIELD one of the model "
                       f"config's fields ({allowed}); remat and scan_layers are --remat and "
                       "--forms")
    try:
      overrides[field] = json.loads(value)
    except json.JSONDecodeError:
      overrides[field] = value
  return overrides


def measure(spec: dict) -> dict:
  """One form's figures, measured in this process."""
  import jax
  import jax.numpy as jnp
  from flop_count import hlo_dot_flops
  from step_setup import donated_train_step

  from twelve_in_one import hostmem
  from twelve_in_one.models import ViLBertForVLTasks, get_model_config, init_params
  from twelve_in_one.tasks import get_task
  from twelve_in_one.tasks.examples import random_batch
  from twelve_in_one.train import prng
  from twelve_in_one.train.steps import create_state

  phases = []

  def phase(name: str) -> None:
    """Resident memory now and its peak since the previous phase."""
    phases.append((name, rss_gib(), peak_rss_since_reset_gib()))
    reset_peak_rss()

  cfg = get_model_config(spec["config"], remat=spec["remat"],
                         scan_layers=FORMS[spec["form"]], **spec["overrides"])
  model = ViLBertForVLTasks(cfg)
  task = get_task(spec["task"])
  batch = jax.device_put(random_batch(task, spec["batch"], vocab_size=cfg.vocab_size,
                                      feature_size=cfg.v_feature_size,
                                      num_vqa_answers=cfg.num_vqa_answers,
                                      num_gqa_answers=cfg.num_gqa_answers))
  step, abstract_state = donated_train_step(model, task)
  key, lr = prng.dropout_key(0, "auto"), jnp.float32(1.0)
  hostmem.release_free_memory()
  phase("imported, model and batch made")
  start = time.perf_counter()
  lowered = step.lower(abstract_state, batch, key, lr)
  lower_s = time.perf_counter() - start
  phase("step lowered")
  rss_lowered = phases[-1][1]
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  del lowered
  phase("step compiled")
  hostmem.release_free_memory()
  phase("malloc_trim")
  executable_rss = phases[-1][1] - rss_lowered
  memory = compiled.memory_analysis()
  hlo = compiled.as_text()
  dot_flops = hlo_dot_flops(hlo)[0] / spec["batch"] if not FORMS[spec["form"]] else None
  serialized = len(compiled.runtime_executable().serialize())
  result = dict(spec, lower_s=lower_s, compile_s=compile_s, hlo_lines=hlo.count("\n"),
                serialized_mib=serialized / 2**20, executable_rss_gib=executable_rss,
                arguments_gib=memory.argument_size_in_bytes / 2**30,
                temporaries_gib=memory.temp_size_in_bytes / 2**30,
                hlo_dot_gflop_per_example=None if dot_flops is None else dot_flops / 1e9)
  del hlo
  if spec["compile_only"]:
    return dict(result, phases=phases, peak_rss_gib=max(p[2] for p in phases))

  if spec["one_program_init"]:
    state = jax.jit(lambda k: create_state(init_params(model, k)))(jax.random.key(0))
    jax.block_until_ready(state)
    hostmem.release_free_memory()
    phase("parameters and moments (one program), malloc_trim")
  else:
    params = jax.jit(lambda k: init_params(model, k))(jax.random.key(0))
    jax.block_until_ready(params)
    hostmem.release_free_memory()
    phase("parameters (program 1), malloc_trim")
    state = jax.jit(create_state, donate_argnums=0)(params)
    jax.block_until_ready(state)
    hostmem.release_free_memory()
    phase("moments (program 2), malloc_trim")
  times = []
  for index in range(1 + spec["steps"]):
    started = time.perf_counter()
    state, metrics = compiled(state, batch, jax.random.fold_in(key, index), lr)
    jax.block_until_ready((state, metrics))
    if index:
      times.append(time.perf_counter() - started)
  phase(f"{1 + spec['steps']} training steps")
  return dict(result, step_times_s=times, median_s=statistics.median(times), phases=phases,
              peak_rss_gib=max([p[2] for p in phases] + [peak_rss_gib()]),
              loss=float(metrics["loss"]))


def run_child(spec: dict) -> dict:
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec)],
                        capture_output=True, text=True, env=child_env(True))
  if proc.returncode != 0:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"measurement {spec} failed (exit {proc.returncode})")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(results: list[dict]) -> None:
  rows = []
  for r in results:
    base = next(b for b in results if b["remat"] == r["remat"] and b["round"] == r["round"]
                and b["form"] == "unrolled")
    dots = r["hlo_dot_gflop_per_example"]
    ran = "median_s" in r
    rows.append([r["round"], r["remat"] or "none", r["form"], f"{r['lower_s']:.1f}",
                 f"{r['compile_s']:.1f}", f"{r['hlo_lines']:,}", f"{r['serialized_mib']:.1f}",
                 f"{r['executable_rss_gib']:.2f}", f"{r['arguments_gib']:.2f}",
                 f"{r['temporaries_gib']:.2f}", "-" if dots is None else f"{dots:.1f}",
                 f"{r['median_s']:.3f}" if ran else "-",
                 f"{min(r['step_times_s']):.3f}-{max(r['step_times_s']):.3f}" if ran else "-",
                 f"{100 * (r['median_s'] / base['median_s'] - 1):+.1f}%" if ran else "-",
                 f"{r['peak_rss_gib']:.2f}", f"{r['loss']:.4f}" if ran else "-"])
  print(fmt_table(["round", "remat", "layers", "lower s", "compile s", "HLO lines",
                   "serialized MiB", "executable GiB (RSS)", "arguments GiB", "temporaries GiB",
                   "HLO dots GFLOP/ex", "median s/step", "min-max s", "vs unrolled",
                   "peak RSS GiB", "loss"], rows))


def print_phases(results: list[dict]) -> None:
  for r in results:
    print(f"\nround {r['round']}, remat {r['remat'] or 'none'}, {r['form']}: resident memory "
          "by phase")
    print(fmt_table(["phase", "RSS GiB", "peak since the phase before GiB"],
                    [[name, f"{rss:.2f}", f"{peak:.2f}"] for name, rss, peak in r["phases"]]))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="base")
  parser.add_argument("--task", default="vqa")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=3, help="timed steps after one untimed")
  parser.add_argument("--remat", default="none,all",
                      help="config.model.remat choices, comma-separated; join kinds with '+'")
  parser.add_argument("--forms", default="unrolled,scanned")
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--compile_only", action="store_true",
                      help="stop after the compile: no state, no steps")
  parser.add_argument("--phases", action="store_true",
                      help="print each process's resident memory after every phase")
  parser.add_argument("--one_program_init", action="store_true",
                      help="make parameters and moments in one program, not the trainer's two")
  parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                      help="a model config field and its value (JSON, else a string), "
                           "repeatable, e.g. num_hidden_layers=6")
  parser.add_argument("--json_out", default="")
  parser.add_argument("--_child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._child:
    print(json.dumps(measure(json.loads(args._child))))
    return
  forms = [f for f in args.forms.split(",") if f]
  unknown = [f for f in forms if f not in FORMS]
  if unknown or "unrolled" not in forms:
    raise SystemExit(f"--forms: {args.forms!r}; expected unrolled and optionally scanned")
  overrides = parse_overrides(args.override)
  print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}  host {platform.node()}  "
        f"cpus {os.cpu_count()}  python {platform.python_version()}")
  print("command: " + " ".join([os.path.relpath(sys.executable)] + sys.argv), flush=True)
  results = []
  for round_index in range(args.rounds):
    for remat in [c for c in args.remat.split(",") if c]:
      for form in forms:
        spec = dict(config=args.config, task=args.task, batch=args.batch, steps=args.steps,
                    remat=remat.replace("+", ","), form=form, round=round_index + 1,
                    overrides=overrides, compile_only=args.compile_only,
                    one_program_init=args.one_program_init)
        result = run_child(spec)
        results.append(result)
        ran = ("compile only" if args.compile_only
               else f"{result['median_s']:.3f} s/step")
        print(f"  round {round_index + 1} remat={remat} {form}: compile {result['compile_s']:.1f} s,"
              f" temporaries {result['temporaries_gib']:.2f} GiB, {ran}, peak RSS "
              f"{result['peak_rss_gib']:.2f} GiB", flush=True)
  print()
  print_table(results)
  if args.phases:
    print_phases(results)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
