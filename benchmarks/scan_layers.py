"""The encoder's layers unrolled and scanned, side by side: compile, executable, step, memory.

    .venv/bin/python benchmarks/scan_layers.py [--config=base] [--task=vqa] [--batch=8]
        [--steps=3] [--remat=none,all] [--forms=unrolled,scanned] [--rounds=1]
        [--json_out=FILE]

For each `--remat` choice and each form (`config.model.scan_layers` off, on), a fresh process
compiles the trainer's real step for the task (`step_setup.donated_train_step`: forward with
dropout, the task loss, backward and the reference AdamW, the state donated) from the state's
shapes, as the trainer does, then makes the state as the trainer makes it and runs one untimed
and `--steps` timed steps on a random batch of the task's official shapes. It prints:

* lower and compile seconds (XLA's compile alone is the "compile" figure);
* the executable: the optimized HLO's lines, the serialized executable's size, and its resident
  memory (RSS after the compile and `malloc_trim` minus RSS after lowering, as BENCHMARKS.md's
  command L measured it);
* XLA's temporaries (`memory_analysis()`);
* the median step time and the process's peak RSS (`getrusage`: compile, state and steps).

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

from process_stats import child_env, fmt_table, peak_rss_gib   # siblings in benchmarks/

FORMS = {"unrolled": False, "scanned": True}


def _rss_gib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 2**20
  return float("nan")


def measure(spec: dict) -> dict:
  """One form's figures, measured in this process."""
  import jax
  import jax.numpy as jnp

  from step_setup import donated_train_step
  from twelve_in_one import hostmem
  from twelve_in_one.models import ViLBertForVLTasks, get_model_config, init_params
  from twelve_in_one.tasks import get_task
  from twelve_in_one.tasks.examples import random_batch
  from twelve_in_one.train import prng
  from twelve_in_one.train.steps import create_state

  cfg = get_model_config(spec["config"], remat=spec["remat"],
                         scan_layers=FORMS[spec["form"]])
  model = ViLBertForVLTasks(cfg)
  task = get_task(spec["task"])
  batch = jax.device_put(random_batch(task, spec["batch"], vocab_size=cfg.vocab_size,
                                      feature_size=cfg.v_feature_size,
                                      num_vqa_answers=cfg.num_vqa_answers,
                                      num_gqa_answers=cfg.num_gqa_answers))
  step, abstract_state = donated_train_step(model, task)
  key, lr = prng.dropout_key(0, "auto"), jnp.float32(1.0)
  hostmem.release_free_memory()
  start = time.perf_counter()
  lowered = step.lower(abstract_state, batch, key, lr)
  lower_s = time.perf_counter() - start
  rss_lowered = _rss_gib()
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  del lowered
  hostmem.release_free_memory()
  executable_rss = _rss_gib() - rss_lowered
  memory = compiled.memory_analysis()
  hlo_lines = compiled.as_text().count("\n")
  serialized = len(compiled.runtime_executable().serialize())

  params = jax.jit(lambda k: init_params(model, k))(jax.random.key(0))
  hostmem.release_free_memory()
  state = jax.jit(create_state, donate_argnums=0)(params)
  jax.block_until_ready(state)
  hostmem.release_free_memory()
  times = []
  for index in range(1 + spec["steps"]):
    started = time.perf_counter()
    state, metrics = compiled(state, batch, jax.random.fold_in(key, index), lr)
    jax.block_until_ready((state, metrics))
    if index:
      times.append(time.perf_counter() - started)
  return dict(spec, lower_s=lower_s, compile_s=compile_s, hlo_lines=hlo_lines,
              serialized_mib=serialized / 2**20, executable_rss_gib=executable_rss,
              temporaries_gib=memory.temp_size_in_bytes / 2**30, step_times_s=times,
              median_s=statistics.median(times), peak_rss_gib=peak_rss_gib(),
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
    rows.append([r["round"], r["remat"], r["form"], f"{r['lower_s']:.1f}", f"{r['compile_s']:.1f}",
                 f"{r['hlo_lines']:,}", f"{r['serialized_mib']:.1f}",
                 f"{r['executable_rss_gib']:.2f}", f"{r['temporaries_gib']:.2f}",
                 f"{r['median_s']:.3f}", f"{min(r['step_times_s']):.3f}-"
                 f"{max(r['step_times_s']):.3f}",
                 f"{100 * (r['median_s'] / base['median_s'] - 1):+.1f}%",
                 f"{r['peak_rss_gib']:.2f}", f"{r['loss']:.4f}"])
  print(fmt_table(["round", "remat", "layers", "lower s", "compile s", "HLO lines",
                   "serialized MiB", "executable GiB (RSS)", "temporaries GiB",
                   "median s/step", "min-max s", "vs unrolled", "peak RSS GiB", "loss"], rows))


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
  print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}  host {platform.node()}  "
        f"cpus {os.cpu_count()}  python {platform.python_version()}")
  print("command: " + " ".join([os.path.relpath(sys.executable)] + sys.argv), flush=True)
  results = []
  for round_index in range(args.rounds):
    for remat in [c for c in args.remat.split(",") if c]:
      for form in forms:
        spec = dict(config=args.config, task=args.task, batch=args.batch, steps=args.steps,
                    remat=remat.replace("+", ","), form=form, round=round_index + 1)
        result = run_child(spec)
        results.append(result)
        print(f"  round {round_index + 1} remat={remat} {form}: compile {result['compile_s']:.1f} s,"
              f" {result['median_s']:.3f} s/step, peak RSS {result['peak_rss_gib']:.2f} GiB",
              flush=True)
  print()
  print_table(results)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
