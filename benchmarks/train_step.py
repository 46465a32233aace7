"""The real per-task training step against the machine's matmul rate: time, FLOPs, memory.

    .venv/bin/python benchmarks/train_step.py [--batch_sizes=8,32] [--tasks=vqa,refcoco]
        [--other_batch_sizes=8] [--dtype=float32|bfloat16] [--attention_impl=einsum]
        [--repeats=5] [--inference=32] [--config=base] [--prng_impl=auto]
        [--remat[=all|text,visual,coattention]]
        [--grad_accum=1] [--official [--official_detect_anomaly]] [--rounds=1]
        [--wait_for="twelve-in-one train"] [--peak_tflops=0] [--json_out=FILE]

What is timed is the step the trainer runs (`train/steps.py`): `make_train_step` for the task
(forward with dropout, the task's loss, backward, the reference AdamW with its per-task active
mask), jitted with the state donated and compiled ahead of time as `StepCache.warm_up` does, on
the `base` model (or `--config`) with random batches of the task's official shapes
(`tasks/examples.random_batch`: VQA is 23 tokens + the task token = 24, 101 regions x 2048).
The batch is put on the device once before the loop (what a prefetching input pipeline gives);
`--host_batch` passes the numpy batch every step instead.

The first task runs at every `--batch_sizes`, the other tasks at `--other_batch_sizes`;
`--inference=N` adds a forward-only run (dropout off, the task's head only) of the first task at
batch N (0: none). Each measurement runs in its own fresh process (unless `--no_isolate`), so
its peak RSS (`resource.getrusage`) is its own; "steps' peak" is the peak of the timed steps
alone (the kernel's count restarted after the state exists), without initialisation's. The
state is made as the trainer makes it (parameters, then moments, the compiler's freed memory
trimmed first). Every process also measures the best
`jnp.dot` of two `--matmul_size`² float32 matrices, so the step's FLOP/s can be compared with
the machine's matmul rate *in the same run* (the machine is shared and noisy).

FLOPs per example are XLA's (`compiled.cost_analysis()["flops"]`: every op, GEMMs plus the
element-wise work), the dot FLOPs read from the compiled HLO, and a hand count of the GEMMs
(`gemm_flops` below, printed per part). "Achieved" uses the hand-counted GEMM FLOPs of what
our step runs (a pooled-only task's last layers at position 0 only: 63.4 GFLOP per VQA training
example), the same convention as the official-code anchor (68.6 GFLOP per training
example, GEMMs only, every layer in full and the pretraining heads). With `--peak_tflops`
(e.g. 790 for an H200 in bf16) the MFU is printed too.

`--official` times, right after each VQA float32 measurement, the official PyTorch step on the
same batch in a fresh process (`official_step.py`): the official model, loss, backward and
`pytorch_transformers` AdamW re-expressed op for op in `official_torch.py`, which
`tests/test_official_torch.py` checks against the fixture made by running the official code.
That gives the ratio to the official code measured within one run, on whatever machine this
runs on.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# Siblings in benchmarks/ (a script's own folder is on sys.path).
from flop_count import gemm_flops, hlo_dot_flops, rows_per_example, training_gemm_flops
from official_compare import print_official, run_official
from step_setup import donated_train_step
from process_stats import (child_env, fmt_table, peak_rss_gib, peak_rss_since_reset_gib,
                           reset_peak_rss, usage_since, usage_snapshot)

# The anchor: the official PyTorch code on another 2-core CPU (AVX-512, 2026-11-29). The
# same-run comparison on this machine is `--official`.
ANCHOR = {
    ("train", 8): {"examples_per_s": 1.94, "step_s": 4.13, "peak_rss_gib": 5.4},
    ("train", 32): {"examples_per_s": 2.36, "step_s": 13.6, "peak_rss_gib": 8.8},
    ("inference", 32): {"examples_per_s": 7.47},
}


# ----------------------------------------------------------------------------- one measurement
@dataclasses.dataclass
class Spec:
  mode: str            # train | inference
  task: str
  batch: int
  config: str
  dtype: str
  attention_impl: str
  repeats: int
  warmup: int
  prng_impl: str
  remat: str
  grad_accum: int
  matmul_size: int
  matmul_repeats: int
  host_batch: bool
  peak_tflops: float
  huge_pages: bool


def _cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def best_matmul_flops(jax, jnp, size: int, repeats: int) -> float:
  """Best FLOP/s of a jitted float32 `jnp.dot` of two size x size matrices."""
  a = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(2), (size, size), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def measure(spec: Spec) -> dict:
  """Runs one measurement in this process and returns its figures."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from twelve_in_one import hostmem
  from twelve_in_one.models import ViLBertForVLTasks, get_model_config, init_params
  from twelve_in_one.tasks import get_task
  from twelve_in_one.tasks.examples import random_batch
  from twelve_in_one.train import prng
  from twelve_in_one.train.objective import task_outputs
  from twelve_in_one.train.steps import create_state

  cfg = get_model_config(spec.config, dtype=spec.dtype, attention_impl=spec.attention_impl,
                         remat=spec.remat)
  task = get_task(spec.task)
  model = ViLBertForVLTasks(cfg)
  host = random_batch(task, spec.batch, vocab_size=cfg.vocab_size,
                      feature_size=cfg.v_feature_size, num_vqa_answers=cfg.num_vqa_answers,
                      num_gqa_answers=cfg.num_gqa_answers)
  batch = host if spec.host_batch else jax.device_put(host)
  seq_len = task.model_text_length(cfg.task_specific_tokens)
  num_regions = task.max_region_num
  matmul_before = best_matmul_flops(jax, jnp, spec.matmul_size, spec.matmul_repeats)

  t0 = time.perf_counter()
  if spec.mode == "train":
    # As the trainer does: compile from the state's shapes before the state exists (the
    # compiler's memory and the state's never add up).
    step, abstract_state = donated_train_step(model, task, spec.grad_accum)
    base_key = prng.dropout_key(0, spec.prng_impl)
    lr = jnp.float32(1.0)
    t1 = time.perf_counter()
    lowered = step.lower(abstract_state, batch, base_key, lr)
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    # As the trainer does (`loop._initial_state`): trim the compiler's freed memory, then
    # parameters and moments from two programs.
    hostmem.release_free_memory()
    params = jax.jit(lambda key: init_params(model, key))(jax.random.key(0))
    hostmem.release_free_memory()
    state = jax.jit(create_state, donate_argnums=0)(params)
    jax.block_until_ready(state)
    hostmem.release_free_memory()
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    init_s = time.perf_counter() - t3
    peak_before_steps, step_peak_known = peak_rss_gib(), reset_peak_rss()
    keys = [jax.random.fold_in(base_key, i) for i in range(spec.warmup + spec.repeats)]
    times, usage = [], []
    for i, key in enumerate(keys):
      before, start = usage_snapshot(), time.perf_counter()
      state, metrics = compiled(state, batch, key, lr)
      jax.block_until_ready((state, metrics))
      if i >= spec.warmup:
        times.append(time.perf_counter() - start)
        usage.append(usage_since(before))
    finite = bool(np.isfinite(float(metrics["loss"])))
    gemm = training_gemm_flops(cfg, task, seq_len, num_regions)
  else:
    # Leaf by leaf from the host, as an evaluation restores a checkpoint: no program holding
    # a random init's temporaries (1.5 GiB for `base`) sets the process's peak.
    abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jax.device_put(
        (rng.standard_normal(s.shape, np.float32) * 0.02).astype(s.dtype)), abstract)
    jax.block_until_ready(params)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    init_s = time.perf_counter() - t0
    forward = jax.jit(lambda p, b: task_outputs(model.apply, p, task, b)[task.output])
    t1 = time.perf_counter()
    lowered = forward.lower(params, batch)
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    hostmem.release_free_memory()
    peak_before_steps, step_peak_known = peak_rss_gib(), reset_peak_rss()
    times, usage = [], []
    for i in range(spec.warmup + spec.repeats):
      before, start = usage_snapshot(), time.perf_counter()
      out = compiled(params, batch)
      out.block_until_ready()
      if i >= spec.warmup:
        times.append(time.perf_counter() - start)
        usage.append(usage_since(before))
    finite = bool(np.isfinite(np.asarray(out, np.float32)).all())
    gemm = sum(gemm_flops(cfg, task, seq_len, num_regions).values()) * rows_per_example(task)

  matmul_after = best_matmul_flops(jax, jnp, spec.matmul_size, spec.matmul_repeats)
  median = statistics.median(times)
  xla_flops = _cost_flops(compiled) / spec.batch
  dot_flops, dot_count = hlo_dot_flops(compiled.as_text())
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  result = dict(
      dataclasses.asdict(spec),
      device=str(device.device_kind), platform=device.platform, num_params=int(num_params),
      seq_len=seq_len, num_regions=num_regions, init_s=init_s, lower_s=t2 - t1,
      compile_s=t3 - t2, step_times_s=times, median_s=median,
      examples_per_s=spec.batch / median, xla_flops_per_example=xla_flops,
      hlo_dot_flops_per_example=dot_flops / spec.batch, hlo_dots=dot_count,
      gemm_flops_per_example=gemm, matmul_flops=max(matmul_before, matmul_after),
      matmul_flops_before=matmul_before, matmul_flops_after=matmul_after,
      peak_rss_gib=max(peak_before_steps, peak_rss_gib()),
      step_peak_rss_gib=peak_rss_since_reset_gib() if step_peak_known else float("nan"),
      finite=finite, load_average_end=os.getloadavg()[0],
      page_faults_per_step=statistics.median(u[0] for u in usage),
      kernel_s_per_step=statistics.median(u[1] for u in usage),
      device_peak_gib=(stats or {}).get("peak_bytes_in_use", 0) / 2**30)
  result["achieved_flops"] = gemm * result["examples_per_s"]
  result["achieved_xla_flops"] = xla_flops * result["examples_per_s"]
  result["fraction_of_matmul"] = result["achieved_flops"] / result["matmul_flops"]
  return result


# ----------------------------------------------------------------------------- driver
def _wait_for_quiet(pattern: str, poll_s: float = 5.0) -> float:
  """Blocks while `pgrep -f pattern` finds a process (other than this one); returns the wait."""
  if not pattern:
    return 0.0
  start = time.monotonic()
  while True:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    pids = [p for p in found.split() if int(p) != os.getpid()]
    if not pids:
      return time.monotonic() - start
    time.sleep(poll_s)


def run_isolated(spec: Spec) -> dict:
  """`measure(spec)` in a fresh interpreter, so peak RSS and caches are the run's own."""
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child",
                         json.dumps(dataclasses.asdict(spec))],
                        capture_output=True, text=True, env=child_env(spec.huge_pages))
  if proc.returncode != 0:
    sys.stderr.write(proc.stderr)
    raise SystemExit(f"measurement {spec} failed (exit {proc.returncode})")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def print_hand_count(cfg, tasks) -> None:
  from twelve_in_one.tasks import get_task
  for name in tasks:
    task = get_task(name)
    seq_len, regions = task.model_text_length(cfg.task_specific_tokens), task.max_region_num
    parts = gemm_flops(cfg, task, seq_len, regions)
    rows = [[part, f"{flops / 1e9:.3f}"] for part, flops in parts.items()]
    forward = sum(parts.values())
    rows.append(["forward, one model row", f"{forward / 1e9:.3f}"])
    rows.append([f"forward per example (x{rows_per_example(task)} rows)",
                 f"{forward * rows_per_example(task) / 1e9:.3f}"])
    rows.append(["training per example: 3x forward - image-embedding dX",
                 f"{training_gemm_flops(cfg, task, seq_len, regions) / 1e9:.3f}"])
    rows.append(["the same with every layer in full (the official code's GEMMs)",
                 f"{training_gemm_flops(cfg, task, seq_len, regions, False) / 1e9:.3f}"])
    print(f"\nHand count of GEMM FLOPs, task {name} ({seq_len} text positions incl. the task "
          f"token, {regions} regions), GFLOP:")
    print(fmt_table(["part", "GFLOP"], rows))


def print_results(results: list[dict], peak_tflops: float) -> None:
  g = lambda x: f"{x / 1e9:.1f}"
  speed, cost = [], []
  for r in results:
    anchor = ANCHOR.get((r["mode"], r["batch"])) if r["task"] == "vqa" else None
    vs = f"{r['examples_per_s'] / anchor['examples_per_s']:.2f}x of {anchor['examples_per_s']}" \
        if anchor else "-"
    rss_vs = (f"{r['peak_rss_gib'] / anchor['peak_rss_gib']:.2f}x of {anchor['peak_rss_gib']}"
              if anchor and "peak_rss_gib" in anchor else "-")
    speed.append([r["mode"], r["task"], r["batch"], r["dtype"],
                  "on" if r["huge_pages"] else "off", f"{r['median_s']:.3f}",
                  f"{min(r['step_times_s']):.3f}-{max(r['step_times_s']):.3f}",
                  len(r["step_times_s"]), f"{r['examples_per_s']:.2f}", vs,
                  f"{r['peak_rss_gib']:.2f}", f"{r['step_peak_rss_gib']:.2f}", rss_vs,
                  f"{r['lower_s']:.1f}+{r['compile_s']:.1f}"])
    row = [r["mode"], r["task"], r["batch"], g(r["xla_flops_per_example"]),
           g(r["hlo_dot_flops_per_example"]), g(r["gemm_flops_per_example"]),
           f"{r['hlo_dot_flops_per_example'] / r['gemm_flops_per_example']:.3f}",
           g(r["achieved_flops"]), g(r["achieved_xla_flops"]), g(r["matmul_flops"]),
           f"{100 * r['fraction_of_matmul']:.0f}%"]
    if peak_tflops:
      row.append(f"{100 * r['achieved_flops'] / (peak_tflops * 1e12):.1f}%")
    cost.append(row)
  print("\nSpeed and memory (median over the timed steps; compile = lower + XLA compile):")
  print(fmt_table(["mode", "task", "batch", "dtype", "huge pages", "median s/step",
                   "min-max s", "steps",
                   "examples/s", "vs anchor", "peak RSS GiB", "steps' peak", "vs anchor",
                   "compile s"], speed))
  print("\nCost per example (GFLOP) and rates (GFLOP/s; achieved = hand GEMM count x "
        "examples/s; matmul = best jnp.dot float32 "
        f"{results[0]['matmul_size']}^3 in the same process):")
  header = ["mode", "task", "batch", "XLA cost", "HLO dots", "hand GEMM", "dots/hand",
            "achieved", "achieved (XLA cost)", "matmul", "achieved/matmul"]
  if peak_tflops:
    header.append(f"MFU vs {peak_tflops:g} TFLOP/s")
  print(fmt_table(header, cost))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_sizes", default="8,32", help="batches of the first task")
  parser.add_argument("--tasks", default="vqa,refcoco")
  parser.add_argument("--other_batch_sizes", default="",
                      help="batches of the other tasks (default: the first of --batch_sizes)")
  parser.add_argument("--config", default="base", help="model preset or official JSON config")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--attention_impl", default="einsum",
                      choices=["einsum", "dot_product_attention"])
  parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  parser.add_argument("--inference", type=int, default=32,
                      help="forward-only batch of the first task (0: skip)")
  parser.add_argument("--no_train", action="store_true", help="only the inference run")
  parser.add_argument("--prng_impl", default="auto",
                      help="key implementation of the dropout rng (auto: the trainer's "
                           "default, counter_hash on cpu and threefry2x32 elsewhere; "
                           "counter_hash, rbg, threefry2x32, unsafe_rbg)")
  parser.add_argument("--grad_accum", type=int, default=1,
                      help="micro-batches per step (config.optimizer.grad_accum_steps): the "
                           "same update from a scan over equal slices of the batch")
  parser.add_argument("--remat", nargs="?", const="all", default="none",
                      help="layers to rematerialise in the backward pass (config.model.remat): "
                      "bare --remat for all, or a comma-separated subset of text, visual, "
                      "coattention")
  parser.add_argument("--matmul_size", type=int, default=2048)
  parser.add_argument("--matmul_repeats", type=int, default=10)
  parser.add_argument("--host_batch", action="store_true",
                      help="pass the numpy batch to every step instead of a device batch")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="the accelerator's matmul rate, to print MFU (H200 bf16: 790)")
  parser.add_argument("--no_isolate", action="store_true",
                      help="run every measurement in this process (peak RSS then accumulates)")
  parser.add_argument("--wait_for", default="",
                      help="before each measurement, wait until `pgrep -f` finds no such process")
  parser.add_argument("--official", action="store_true",
                      help="after each vqa float32 measurement, time the official step "
                           "(benchmarks/official_torch.py, PyTorch) on the same batch")
  parser.add_argument("--official_detect_anomaly", action="store_true",
                      help="time the official step with torch.autograd.set_detect_anomaly(True),"
                           " as train_tasks.py leaves it")
  parser.add_argument("--huge_pages", default="on", choices=["on", "off", "both"],
                      help="run each measurement with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
                           "(what the twelve-in-one command sets for itself); both: each "
                           "measurement with, then without")
  parser.add_argument("--official_huge_pages", action="store_true",
                      help="give the official step the same tunable (as shipped it runs without)")
  parser.add_argument("--rounds", type=int, default=1,
                      help="run every measurement (and its official twin) this many times, "
                           "alternating, so drifts of a shared machine hit both alike")
  parser.add_argument("--json_out", default="")
  parser.add_argument("--_child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args._child:
    print(json.dumps(measure(Spec(**json.loads(args._child)))))
    return

  tasks = [t for t in args.tasks.split(",") if t]
  batches = [int(b) for b in args.batch_sizes.split(",") if b]
  others = [int(b) for b in args.other_batch_sizes.split(",") if b] or batches[:1]
  common = dict(config=args.config, dtype=args.dtype, attention_impl=args.attention_impl,
                repeats=args.repeats, warmup=args.warmup, prng_impl=args.prng_impl,
                remat=args.remat, grad_accum=args.grad_accum,
                matmul_size=args.matmul_size, matmul_repeats=args.matmul_repeats,
                host_batch=args.host_batch, peak_tflops=args.peak_tflops,
                huge_pages=args.huge_pages != "off")
  specs = []
  if not args.no_train:
    specs += [Spec("train", tasks[0], b, **common) for b in batches]
    specs += [Spec("train", t, b, **common) for t in tasks[1:] for b in others]
  if args.inference:
    specs.append(Spec("inference", tasks[0], args.inference, **common))
  if args.huge_pages == "both":   # each measurement with, then without: a lever's A/B
    specs = [dataclasses.replace(spec, huge_pages=on) for spec in specs for on in (True, False)]

  import jax
  from twelve_in_one.models import get_model_config
  print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}  host {platform.node()}  "
        f"cpus {os.cpu_count()}  python {platform.python_version()}  jax {jax.__version__}")
  print("command: " + " ".join([os.path.relpath(sys.executable)] + sys.argv))
  cfg = get_model_config(args.config, dtype=args.dtype, attention_impl=args.attention_impl)
  print_hand_count(cfg, tasks)

  results, pairs = [], []
  for spec in [spec for _ in range(args.rounds) for spec in specs]:
    waited = _wait_for_quiet(args.wait_for)
    started = time.perf_counter()
    result = measure(spec) if args.no_isolate else run_isolated(spec)
    result["waited_s"], result["wall_s"] = waited, time.perf_counter() - started
    results.append(result)
    print(f"  {spec.mode} {spec.task} batch {spec.batch}: {result['median_s']:.3f} s/step, "
          f"{result['examples_per_s']:.2f} ex/s, peak RSS {result['peak_rss_gib']:.2f} GiB, "
          f"compile {result['compile_s']:.1f} s, {result['num_params'] / 1e6:.1f}M params, "
          f"{result['page_faults_per_step']:.0f} page faults and "
          f"{result['kernel_s_per_step']:.2f} s kernel time per step, "
          f"finite={result['finite']} (waited {waited:.0f} s, wall {result['wall_s']:.0f} s, "
          f"load average {result['load_average_end']:.1f})",
          flush=True)
    if args.official and spec.task == "vqa" and spec.dtype == "float32":
      official = run_official(spec, args.official_detect_anomaly,
                              args.official_huge_pages)
      result["official"] = official
      pairs.append((result, official))
      print(f"  official {spec.mode} {spec.task} batch {spec.batch}: "
            f"{official['median_s']:.3f} s/step, {official['examples_per_s']:.2f} ex/s, peak RSS "
            f"{official['peak_rss_gib']:.2f} GiB, finite={official['finite']}", flush=True)
  print(f"\ndevice {results[0]['device']} ({results[0]['platform']}); prng "
        f"{args.prng_impl}; attention {args.attention_impl}; remat {args.remat}; grad_accum "
        f"{args.grad_accum}; huge pages {args.huge_pages}; batch on "
        f"{'host' if args.host_batch else 'device'}")
  print_results(results, args.peak_tflops)
  if pairs:
    print_official(pairs)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
