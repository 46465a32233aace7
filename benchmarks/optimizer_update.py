"""The optimizer update alone: ours (one XLA program) against the official python loop.

    .venv/bin/python benchmarks/optimizer_update.py [--config=base] [--repeats=5]

Ours: `train/optimizer.build` (the optax chain) for a VQA step, jitted with parameters and
state donated, on the model's parameter tree with a random gradient, in both
`unused_params` modes: "skip" updates the body and the VQA head; "torch1" also every other
head, as in a run once every task has stepped (each with a zero gradient). Beside it, in the
same process, the hand-written update the chain replaced (`handwritten_update`, kept here as
the baseline). XLA fuses each parameter's update into one loop that reads p, g, m, v and
writes p, m, v in place, so its floor is memory bandwidth: 7 x 4 bytes per parameter.

Official: `pytorch_transformers` AdamW (`official_torch.OfficialAdamW`, one param group per
parameter, a python loop of 6-7 tensor ops each) on the same number of parameters, in a fresh
process of its own (torch and numpy only). Prints each one's minimum and median time over the
repeats (ours take turns, one call each per round) and the bytes/s each reaches at its minimum.
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
  return {"min_s": min(times), "median_s": statistics.median(times), "updated_params": updated}


def handwritten_update(params, grads, state, lr_multiplier, *, lrs, decays, active,
                       b1=0.9, b2=0.999, eps=1e-6):
  """The update before the optax chain: BertAdam-style AdamW written out per leaf, `active`
  (static bools) skipping untouched parameters. The baseline of the optax version's time."""
  import jax
  import jax.numpy as jnp

  def leaf(p, g, m, v, lr, wd, on):
    if not on:
      return p, m, v
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    step_lr = lr * lr_multiplier
    p = p - step_lr * m / (jnp.sqrt(v) + eps)
    if wd:
      p = p - step_lr * wd * p
    return p, m, v

  out = jax.tree.map(leaf, params, grads, state["mu"], state["nu"], lrs, decays, active)
  treedef = jax.tree.structure(params)
  triples = treedef.flatten_up_to(out)
  return (treedef.unflatten([t[0] for t in triples]),
          {"mu": treedef.unflatten([t[1] for t in triples]),
           "nu": treedef.unflatten([t[2] for t in triples])})


def ours_update(config_name: str, repeats: int) -> dict[str, dict]:
  """Seconds of each of our updates: {"handwritten (before)", "optax, unused_params=..."}.

  The variants take turns, one call each per round, so a busy machine slows them alike; the
  minimum over the rounds is the figure least disturbed by other processes.
  """
  import jax
  import jax.numpy as jnp
  import optax
  from twelve_in_one.models import ViLBertForVLTasks, get_model_config, init_params
  from twelve_in_one.train import optimizer as opt

  model = ViLBertForVLTasks(get_model_config(config_name))
  fresh = lambda: jax.jit(lambda key: init_params(model, key))(jax.random.key(0))
  params = fresh()
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape) * 1e-3, params)
  reached = {name: jax.tree.map(lambda _, on=name in ("bert", "vil_prediction"): on, sub)
             for name, sub in params.items()}
  count = lambda mask: int(sum(p.size for p, on in zip(jax.tree.leaves(params),
                                                         jax.tree.leaves(mask)) if on))
  variants = {}   # name -> [compiled update, params, state, updated parameters]

  config = opt.OptimizerConfig()
  lrs = opt.learning_rates(params, config)
  decays = jax.tree.map(lambda on: config.weight_decay if on else 0.0,
                        opt.weight_decay_mask(params))
  update = jax.jit(lambda p, g, s: handwritten_update(p, g, s, jnp.float32(1.0), lrs=lrs,
                                                      decays=decays, active=reached),
                   donate_argnums=(0, 2))
  state = {"mu": jax.tree.map(jnp.zeros_like, params), "nu": jax.tree.map(jnp.zeros_like, params)}
  variants["handwritten (before)"] = [update.lower(params, grads, state).compile(), params,
                                      state, count(reached)]

  for mode in ("skip", "torch1"):
    params = fresh()
    optimizer = opt.build(opt.OptimizerConfig(unused_params=mode), params, reached)

    def step(p, g, s, optimizer=optimizer):
      updates, s = optimizer.update(g, s, p, lr_multiplier=jnp.float32(1.0))
      return optax.apply_updates(p, updates), s

    state = optimizer.init(params)
    if mode == "torch1":   # every head reached by some earlier step: all of them move
      state = state._replace(touched=jnp.ones_like(state.touched))
    compiled = jax.jit(step, donate_argnums=(0, 2)).lower(params, grads, state).compile()
    variants[f"optax, unused_params={mode}"] = [
        compiled, params, state,
        count(reached) if mode == "skip" else sum(p.size for p in jax.tree.leaves(params))]

  times = {name: [] for name in variants}
  for round_index in range(repeats + 1):
    for name, entry in variants.items():
      compiled, params, state, _ = entry
      start = time.perf_counter()
      params, state = compiled(params, grads, state)
      jax.block_until_ready((params, state))
      entry[1], entry[2] = params, state
      if round_index:
        times[name].append(time.perf_counter() - start)
  return {name: {"min_s": min(times[name]), "median_s": statistics.median(times[name]),
                 "updated_params": variants[name][3]} for name in variants}


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
  for name, result in list(ours.items()) + [("official (python loop)", official)]:
    moved = 7 * 4 * result["updated_params"]
    print(f"{name:<30} min {result['min_s']:.3f} s, median {result['median_s']:.3f} s for "
          f"{result['updated_params'] / 1e6:.1f}M parameters, "
          f"{moved / result['min_s'] / 1e9:.1f} GB/s at the min (7 x 4 bytes each)")
  skip = ours["optax, unused_params=skip"]["min_s"]
  print(f"min optax skip / handwritten: {skip / ours['handwritten (before)']['min_s']:.2f}x; "
        f"official / optax skip: {official['min_s'] / skip:.2f}x")


if __name__ == "__main__":
  main()
