"""`train_step.py --official`: the official step on our batch, in a process of its own.

`run_official` writes the batch `train_step.measure` times (same task, size and seed) to a
temporary file and runs `official_step.py` on it; `print_official` sets the two side by side.
"""

from __future__ import annotations

import json
import os
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
  ours = (training_gemm_flops(cfg, task, seq_len, task.max_region_num) if spec.mode == "train"
          else sum(gemm_flops(cfg, task, seq_len, task.max_region_num).values()))
  result["gemm_flops_per_example"] = ours + heads
  result["achieved_flops"] = result["gemm_flops_per_example"] * result["examples_per_s"]
  result["fraction_of_matmul"] = result["achieved_flops"] / result["matmul_flops"]
  return result


def print_official(pairs: list[tuple[dict, dict]]) -> None:
  """Ours against the official step measured right after it, in the same run."""
  rows = []
  for ours, official in pairs:
    label = ours["mode"] + (f" (grad_accum {ours['grad_accum']})"
                            if ours["mode"] == "train" and ours["grad_accum"] > 1 else "")
    rows.append([label, ours["batch"], f"{ours['examples_per_s']:.2f}",
                 f"{official['examples_per_s']:.2f}",
                 f"{ours['examples_per_s'] / official['examples_per_s']:.2f}x",
                 f"{ours['peak_rss_gib']:.2f}", f"{official['peak_rss_gib']:.2f}",
                 f"{ours['peak_rss_gib'] / official['peak_rss_gib']:.2f}x",
                 f"{ours['step_peak_rss_gib']:.2f} / {official['step_peak_rss_gib']:.2f}",
                 f"{100 * ours['fraction_of_matmul']:.0f}% of {ours['matmul_flops'] / 1e9:.0f}",
                 f"{100 * official['fraction_of_matmul']:.0f}% of "
                 f"{official['matmul_flops'] / 1e9:.0f}",
                 f"{100 * official['achieved_flops'] / ours['matmul_flops']:.0f}%"])
  print("\nSame run: ours against the official step re-expressed in PyTorch "
        "(benchmarks/official_torch.py, checked against the official fixture; torch "
        f"{pairs[0][1]['torch']}, {pairs[0][1]['threads']} threads, anomaly detection "
        f"{'on' if pairs[0][1]['detect_anomaly'] else 'off'}); achieved GEMM GFLOP/s over each "
        "framework's own best 2048^3 matmul, and the official step over XLA's:")
  print(fmt_table(["mode", "batch", "ours ex/s", "official ex/s", "speed", "ours RSS GiB",
                    "official RSS GiB", "RSS", "steps' own peak ours / official",
                    "ours / XLA matmul", "official / torch matmul",
                    "official / XLA matmul"], rows))
