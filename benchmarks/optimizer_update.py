"""The optimizer update alone: ours (one XLA program) against the official python loop.

    .venv/bin/python benchmarks/optimizer_update.py [--config=base] [--repeats=5]

Ours: `train/optimizer.apply_update` for a VQA step (the per-task active mask, per-parameter lr
and decay), jitted with parameters and moments donated, on the model's parameter tree with a
random gradient. XLA fuses each parameter's update into one loop that reads p, g, m, v and
writes p, m, v in place, so its floor is memory bandwidth: 7 x 4 bytes per parameter.

Official: `pytorch_transformers` AdamW (`official_torch.OfficialAdamW`, one param group per
parameter, a python loop of 6-7 tensor ops each) on the same number of parameters, in a fresh
process of its own (torch and numpy only). Prints both times and the bytes/s each reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def official_update(config: dict, repeats: int) -> dict:
  """The official optimizer step on the official model's parameters with random gradients."""
  import torch
  from official_torch import OfficialAdamW, OfficialViLBert, official_param_groups
  torch.manual_seed(0)
  model = OfficialViLBert(config)
  # What a VQA step leaves: gradients on the body and the VQA head; None on the other heads
  # and on q_dense1/q_dense2, which the official forward never uses.
  for name, param in model.named_parameters():
    used = ((name.startswith("bert.") and "q_dense" not in name)
            or name.startswith("vil_prediction."))
    param.grad = torch.randn_like(param) * 1e-3 if used else None
  optimizer = OfficialAdamW(official_param_groups(model))
  times = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    optimizer.step()
    if i:
      times.append(time.perf_counter() - start)
  updated = sum(p.numel() for p in model.parameters() if p.grad is not None)
  return {"median_s": statistics.median(times), "updated_params": updated}


def ours_update(config_name: str, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  from twelve_in_one.models import ViLBertForVLTasks, get_model_config, init_params
  from twelve_in_one.train import optimizer as opt

  model = ViLBertForVLTasks(get_model_config(config_name))
  params = jax.jit(lambda key: init_params(model, key))(jax.random.key(0))
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape) * 1e-3, params)
  state = opt.init_state(params)
  config = opt.OptimizerConfig()
  lrs, decays = opt.learning_rates(params, config), opt.weight_decays(params, config)
  active = opt.active_mask(params, {"bert", "vil_prediction"})
  update = jax.jit(lambda p, g, s: opt.apply_update(p, g, s, jnp.float32(1.0), config=config,
                                                    lrs=lrs, decays=decays, active=active),
                   donate_argnums=(0, 2))
  compiled = update.lower(params, grads, state).compile()
  times = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    params, state = compiled(params, grads, state)
    jax.block_until_ready((params, state))
    if i:
      times.append(time.perf_counter() - start)
  updated = sum(p.size for name, sub in params.items() if name in ("bert", "vil_prediction")
                for p in jax.tree.leaves(sub))
  return {"median_s": statistics.median(times), "updated_params": int(updated)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="base")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--_official", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._official:
    print(json.dumps(official_update(json.loads(args._official), args.repeats)))
    return

  from twelve_in_one.models import get_model_config
  ours = ours_update(args.config, args.repeats)
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--repeats={args.repeats}",
                         "--_official",
                         json.dumps(get_model_config(args.config).to_official_dict())],
                        capture_output=True, text=True, check=True)
  official = json.loads(proc.stdout.strip().splitlines()[-1])
  print(f"command: {' '.join([os.path.relpath(sys.executable)] + sys.argv)}")
  for name, result in (("ours (XLA, one program)", ours),
                       ("official (python loop)", official)):
    moved = 7 * 4 * result["updated_params"]
    print(f"{name:<26} {result['median_s']:.3f} s for {result['updated_params'] / 1e6:.1f}M "
          f"parameters, {moved / result['median_s'] / 1e9:.1f} GB/s (7 x 4 bytes each)")
  print(f"official / ours: {official['median_s'] / ours['median_s']:.2f}x")


if __name__ == "__main__":
  main()
