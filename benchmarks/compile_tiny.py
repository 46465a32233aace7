"""How the tiny model's text width drives XLA:CPU's compile of the training gradient.

    .venv/bin/python benchmarks/compile_tiny.py [--widths=24,30,36,48] [--repeats=2]

For each text-stream width, the tiny preset's VQA loss gradient (dropout on, the counter-hash
dropout keys the trainer uses, one CPU device) is lowered and compiled with the test suite's
XLA flags (`--xla_backend_optimization_level=0`), and the script prints the compile time
(best and worst of `--repeats`), the optimized HLO's size and how many of its fusions read
ops from four or more encoder layers: XLA:CPU fuses a narrow LayerNorm into
its consumers (30 wide still, 36 no longer), so the residual stream is then recomputed
inside each fusion.
Each compile is of a fresh function, so XLA's in-memory cache cannot answer it; the
persistent cache is off unless `JAX_COMPILATION_CACHE_DIR` is set.
"""

from __future__ import annotations

import os

# Before jax is imported: the tests' backend flags, one host device.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from twelve_in_one.models import ViLBertForVLTasks, init_params, tiny_config  # noqa: E402
from twelve_in_one.tasks import get_task  # noqa: E402
from twelve_in_one.tasks.examples import random_batch  # noqa: E402
from twelve_in_one.train import prng  # noqa: E402
from twelve_in_one.train.steps import task_loss  # noqa: E402

_ENCODER_OP = re.compile(r'op_name="[^"]*jvp\(ViLBertForVLTasks\)/bert/encoder/(\w+)/')


def chained_fusions(hlo_text: str) -> int:
  """Fused computations whose ops come from four or more forward encoder layers."""
  computations = re.split(r"\n(?=\S)", hlo_text)
  return sum(1 for body in computations
             if body.startswith("%fused") and len(set(_ENCODER_OP.findall(body))) >= 4)


def measure(width: int, repeats: int) -> dict:
  """Compile times and HLO size of the tiny VQA gradient with a `width`-wide text stream."""
  model = ViLBertForVLTasks(tiny_config(hidden_size=width))
  params = init_params(model, jax.random.key(0))
  task = get_task("vqa")
  batch = random_batch(task, 8, vocab_size=model.config.vocab_size, seq_len=6, num_regions=5)
  key = prng.dropout_key(3, prng.COUNTER_HASH)
  times, text = [], ""
  for _ in range(repeats):
    def loss(p, rng):
      return task_loss(model.apply, p, task, batch, deterministic=False, rng=rng,
                       loss_scale=2.0)[0]
    lowered = jax.jit(jax.grad(loss)).lower(params, key)
    started = time.perf_counter()
    compiled = lowered.compile()
    times.append(time.perf_counter() - started)
    text = compiled.as_text()
  return {"width": width, "compile": times, "lines": text.count("\n"),
          "fusions": text.count(" fusion("), "chained": chained_fusions(text)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--widths", default="24,30,36,48", help="text-stream widths")
  parser.add_argument("--repeats", type=int, default=2, help="compiles per width")
  args = parser.parse_args()
  widths = [int(w) for w in args.widths.split(",")]
  for width in widths:
    if width % tiny_config().num_attention_heads:
      raise SystemExit(f"--widths: {width} is not a multiple of the tiny preset's "
                       f"{tiny_config().num_attention_heads} attention heads")
  print(f"jax {jax.__version__}; XLA_FLAGS={os.environ['XLA_FLAGS']!r}")
  print("| text width | compile s (best-worst) | HLO lines | fusions | fusions over >= 4 layers |")
  print("|---|---|---|---|---|")
  for width in widths:
    row = measure(width, args.repeats)
    print(f"| {width} | {min(row['compile']):.2f}-{max(row['compile']):.2f} | "
          f"{row['lines']} | {row['fusions']} | {row['chained']} |", flush=True)


if __name__ == "__main__":
  main()
