"""Times the official step (`official_torch.py`) in a fresh process: `train_step.py --official`.

    .venv/bin/python benchmarks/official_step.py '{"config": {...}, "batch_path": "b.npz",
        "mode": "train", "repeats": 3, "warmup": 1, "matmul_size": 2048, "matmul_repeats": 10}'

Imports only torch and numpy (and its sibling), so the peak RSS it reports is the official
step's own, with none of JAX's memory. Prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any, Mapping

import numpy as np
import torch

# Siblings in benchmarks/ (a script's own folder is on sys.path).
from official_torch import (OfficialAdamW, OfficialViLBert, official_batch, official_param_groups,
                            vqa_training_step)
from process_stats import peak_rss_gib, peak_rss_since_reset_gib, reset_peak_rss


def best_matmul_flops(size: int, repeats: int) -> float:
  """Best FLOP/s of torch's float32 `a @ b` for two size x size matrices (this process)."""
  a, b = torch.randn(size, size), torch.randn(size, size)
  a @ b
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def measure(config: Mapping[str, Any], batch_path: str, mode: str, repeats: int, warmup: int,
            matmul_size: int, matmul_repeats: int, detect_anomaly: bool = False) -> dict:
  """Times the official step (or forward, all heads) on the batch in `batch_path` (our layout).

  One VQA update as `train_tasks.py` runs it: train mode (dropout on), forward, loss, backward,
  AdamW, zero_grad. Inference: eval mode under `no_grad`, the whole official forward.
  """
  torch.manual_seed(0)
  batch = official_batch(np.load(batch_path))
  size = batch["question"].shape[0]
  matmul_before = best_matmul_flops(matmul_size, matmul_repeats)
  start = time.perf_counter()
  model = OfficialViLBert(config)
  init_s = time.perf_counter() - start
  num_params = sum(p.numel() for p in model.parameters())
  torch.autograd.set_detect_anomaly(detect_anomaly)
  peak_before_steps, step_peak_known = peak_rss_gib(), reset_peak_rss()
  times, values = [], []   # values: the losses (training) or a logit mean, to check finiteness
  if mode == "train":
    model.train()
    optimizer = OfficialAdamW(official_param_groups(model))
    for i in range(warmup + repeats):
      start = time.perf_counter()
      loss, _ = vqa_training_step(model, optimizer, batch)
      if i >= warmup:
        times.append(time.perf_counter() - start)
      values.append(loss)
  else:
    model.eval()
    task_tokens = batch["question"].new_full((size, 1), 1)
    with torch.no_grad():
      for i in range(warmup + repeats):
        start = time.perf_counter()
        out = model(batch["question"], batch["features"], batch["spatials"],
                    batch["segment_ids"], batch["input_mask"], batch["image_mask"],
                    task_tokens)
        if i >= warmup:
          times.append(time.perf_counter() - start)
      values.append(float(out["vil_prediction"].float().abs().mean()))
  matmul_after = best_matmul_flops(matmul_size, matmul_repeats)
  median = statistics.median(times)
  return dict(mode=mode, batch=size, torch=torch.__version__, threads=torch.get_num_threads(),
              num_params=int(num_params), init_s=init_s, step_times_s=times, median_s=median,
              examples_per_s=size / median, peak_rss_gib=max(peak_before_steps, peak_rss_gib()),
              step_peak_rss_gib=(peak_rss_since_reset_gib() if step_peak_known
                                 else float("nan")),
              matmul_flops=max(matmul_before, matmul_after), matmul_flops_before=matmul_before,
              matmul_flops_after=matmul_after, finite=bool(np.isfinite(values).all()),
              values=values, detect_anomaly=detect_anomaly)


if __name__ == "__main__":   # one isolated measurement: argv[1] is its JSON keyword arguments
  print(json.dumps(measure(**json.loads(sys.argv[1]))))
