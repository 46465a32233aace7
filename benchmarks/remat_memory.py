"""What each remat choice costs and saves: temporaries, program size and compile time.

    .venv/bin/python benchmarks/remat_memory.py [--batch=32] [--task=vqa] [--config=base]
        [--choices=none,coattention,visual,visual+coattention,all]

For every choice of `config.model.remat` (a `+`-joined subset of text, visual, coattention,
or none / all), compiles the trainer's real step (`make_train_step`, the state donated, as
`benchmarks/train_step.py` does) from the state's shapes alone, in a fresh process, and prints
XLA's `memory_analysis()` (arguments, outputs, temporaries), the GEMM FLOPs in the compiled HLO
per example (remat adds one more forward of the recomputed layers) and the lower and compile
times. Nothing is executed, so it runs in about half a minute per choice on 2 cores; the
step's speed and peak RSS under a choice come from `train_step.py --remat=<choice>`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from flop_count import hlo_dot_flops
from process_stats import child_env, fmt_table
from step_setup import donated_train_step


def measure(task_name: str, batch: int, config: str, remat: str) -> dict:
  """Compiles one step in this process and returns its figures."""
  import jax

  from twelve_in_one.models import ViLBertForVLTasks, get_model_config
  from twelve_in_one.tasks import get_task
  from twelve_in_one.tasks.examples import random_batch
  from twelve_in_one.train import prng

  cfg = get_model_config(config, remat=remat.replace("+", ","))
  task = get_task(task_name)
  model = ViLBertForVLTasks(cfg)
  batch_arrays = random_batch(task, batch, vocab_size=cfg.vocab_size,
                              feature_size=cfg.v_feature_size,
                              num_vqa_answers=cfg.num_vqa_answers,
                              num_gqa_answers=cfg.num_gqa_answers)
  step, abstract_state = donated_train_step(model, task)
  start = time.perf_counter()
  lowered = step.lower(abstract_state, batch_arrays, prng.dropout_key(0, "counter_hash"),
                       jax.numpy.float32(1.0))
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  memory = compiled.memory_analysis()
  hlo = compiled.as_text()
  gib = 1024.0 ** 3
  return {
      "remat": remat, "kinds": cfg.remat or "none", "batch": batch, "task": task_name,
      "arguments_gib": memory.argument_size_in_bytes / gib,
      "outputs_gib": memory.output_size_in_bytes / gib,
      "temporaries_gib": memory.temp_size_in_bytes / gib,
      "hlo_dot_gflop_per_example": hlo_dot_flops(hlo)[0] / batch / 1e9,
      "hlo_lines": hlo.count("\n"),
      "lower_s": lowered_at - start, "compile_s": compiled_at - lowered_at,
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--task", default="vqa")
  parser.add_argument("--config", default="base")
  parser.add_argument("--choices", default="none,coattention,visual,visual+coattention,all",
                      help="comma-separated remat choices; join kinds with '+'")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(measure(args.task, args.batch, args.config, args.child)))
    return
  rows = []
  for choice in [c for c in args.choices.split(",") if c]:
    # A fresh process per choice: no compile cache or allocator state carries over.
    out = subprocess.run([sys.executable, __file__, f"--batch={args.batch}",
                          f"--task={args.task}", f"--config={args.config}", f"--child={choice}"],
                         env=child_env(huge_pages=True), capture_output=True, text=True,
                         check=False)
    if out.returncode:
      sys.exit(f"remat={choice}: the measurement failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append(result)
    print(f"remat={choice}: temporaries {result['temporaries_gib']:.2f} GiB, compile "
          f"{result['compile_s']:.1f} s", flush=True)
  none = next((r for r in rows if r["kinds"] == "none"), None)
  header = ["remat", "temporaries GiB", "vs none", "arguments GiB", "HLO dots GFLOP/ex",
            "HLO lines", "lower s", "compile s"]
  table = []
  for r in rows:
    ratio = f"{r['temporaries_gib'] / none['temporaries_gib']:.2f}×" if none else "–"
    table.append([r["remat"], f"{r['temporaries_gib']:.2f}", ratio,
                  f"{r['arguments_gib']:.2f}", f"{r['hlo_dot_gflop_per_example']:.1f}",
                  f"{r['hlo_lines']:,}", f"{r['lower_s']:.1f}", f"{r['compile_s']:.1f}"])
  print(f"\n{args.config} {args.task} training step, batch {args.batch}, float32:")
  print(fmt_table(header, table))


if __name__ == "__main__":
  main()
