"""`train_step.py --official`: the official step on our batch, in a process of its own.

`run_official` writes the batch `train_step.measure` times (same task, size and seed) to a
temporary file and runs `official_step.py` on it; `print_official` sets the two side by side.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from flop_count import gemm_flops, pretraining_heads_flops, training_gemm_flops
from process_stats import child_env, fmt_table


def run_official(spec, detect_anomaly: bool, huge_pages: bool) -> dict:
  """The official step (`official_torch.py`) on the same batch as `measure(spec)`, in a fresh
  process (`official_step.py`: torch and numpy only), with its achieved GEMM FLOP/s."""
  import numpy as np
  from twelve_in_one.models import get_model_config
  from twelve_in_one.tasks import get_task
  from twelve_in_one.tasks.examples import random_batch

  cfg = get_model_config(spec.config)
  task = get_task(spec.task)
  host = random_batch(task, spec.batch, vocab_size=cfg.vocab_size,
                      feature_size=cfg.v_feature_size, num_vqa_answers=cfg.num_vqa_answers,
                      num_gqa_answers=cfg.num_gqa_answers)        # the same batch as ours
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "batch.npz")
    np.savez(path, **host)
    kwargs = dict(config=cfg.to_official_dict(), batch_path=path, mode=spec.mode,
                  repeats=spec.repeats, warmup=spec.warmup, matmul_size=spec.matmul_size,
                  matmul_repeats=spec.matmul_repeats, detect_anomaly=detect_anomaly)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_step.py")
    proc = subprocess.run([sys.executable, script, json.dumps(kwargs)], capture_output=True,
                          text=True, env=child_env(huge_pages))
  if proc.returncode != 0:
    sys.stderr.write(proc.stderr)
    raise SystemExit(f"official measurement {spec} failed (exit {proc.returncode})")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  seq_len = task.model_text_length(cfg.task_specific_tokens)
  heads = pretraining_heads_flops(cfg, seq_len, task.max_region_num)
  ours = (training_gemm_flops(cfg, task, seq_len, task.max_region_num, first_position_only=False)
          if spec.mode == "train"
          else sum(gemm_flops(cfg, task, seq_len, task.max_region_num, False).values()))
  result["gemm_flops_per_example"] = ours + heads
  result["achieved_flops"] = result["gemm_flops_per_example"] * result["examples_per_s"]
  result["fraction_of_matmul"] = result["achieved_flops"] / result["matmul_flops"]
  return result


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
  """The median, and the range when there is more than one value."""
  median = statistics.median(values)
  if len(values) == 1:
    return fmt.format(median)
  return f"{fmt.format(median)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def print_official(pairs: list[tuple[dict, dict]]) -> None:
  """Ours against the official step measured right after it; with several rounds, the median
  of each round's own ratio (the machine's speed drifts between rounds, not within a pair)."""
  groups: dict[tuple, list[tuple[dict, dict]]] = {}
  for ours, official in pairs:
    groups.setdefault((ours["mode"], ours["batch"], ours["grad_accum"]), []).append(
        (ours, official))
  rows = []
  for (mode, batch, grad_accum), group in groups.items():
    ours_of = lambda key: [o[key] for o, _ in group]
    official_of = lambda key: [f[key] for _, f in group]
    ratio = lambda key: [o[key] / f[key] for o, f in group]
    label = mode + (f" (grad_accum {grad_accum})" if mode == "train" and grad_accum > 1 else "")
    rows.append([label, batch, len(group), _spread(ours_of("examples_per_s")),
                 _spread(official_of("examples_per_s")),
                 _spread(ratio("examples_per_s"), "{:.2f}x"),
                 _spread(ours_of("peak_rss_gib")), _spread(official_of("peak_rss_gib")),
                 _spread(ratio("peak_rss_gib"), "{:.2f}x"),
                 _spread(ratio("step_peak_rss_gib"), "{:.2f}x"),
                 _spread([100 * x for x in ours_of("fraction_of_matmul")], "{:.0f}%"),
                 _spread([100 * x for x in official_of("fraction_of_matmul")], "{:.0f}%"),
                 _spread([100 * f["achieved_flops"] / o["matmul_flops"] for o, f in group],
                         "{:.0f}%")])
  official = pairs[0][1]
  print("\nSame run: ours against the official step re-expressed in PyTorch "
        "(benchmarks/official_torch.py, checked against the official fixture; torch "
        f"{official['torch']}, {official['threads']} threads, anomaly detection "
        f"{'on' if official['detect_anomaly'] else 'off'}). Median over rounds (range); each "
        "ratio is taken within its round. Achieved GEMM FLOP/s over each framework's own best "
        "2048^3 matmul, and the official step over XLA's:")
  print(fmt_table(["mode", "batch", "rounds", "ours ex/s", "official ex/s", "speed",
                   "ours RSS GiB", "official RSS GiB", "RSS", "steps' own peak RSS",
                   "ours / XLA matmul", "official / torch matmul", "official / XLA matmul"],
                  rows))
