"""The reference optimizer: BertAdam-style AdamW without bias correction, and its LR schedule.

Spec §5 and the fixture's training README (§3, §4). `pytorch_transformers` 1.2.0 `AdamW` with
`correct_bias=False`, betas (0.9, 0.999), eps 1e-6, per parameter:

    m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g²
    p = p - lr * m / (sqrt(v) + eps)
    p = p - lr * wd * p                      # decoupled decay, applied to the updated p

Parameter groups, decided on the *official* parameter name (so on the same strings):
* lr = `head_lr` (1e-4) if the name contains "vil_", else `base_lr` (2e-5);
* wd = 0 if the name contains "bias", "LayerNorm.bias" or "LayerNorm.weight", else 0.01. This
  substring rule decays `biOutput.LayerNorm1/2.weight` and the heads' `logit_fc.2.weight`
  (LayerNorm scales under other names); we keep it, as the released model was trained so.

Parameters a task's forward does not reach have no gradient in the reference (`.grad` is None
with torch >= 2's `zero_grad(set_to_none=True)`), and AdamW skips them entirely: no moment
update and no decay. Our per-task steps pass a static `active` mask with the same meaning, so a
VQA step never decays or moves the NLVR2 head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from twelve_in_one.interop.names import official_name

NO_DECAY_SUBSTRINGS = ("bias", "LayerNorm.bias", "LayerNorm.weight")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  base_lr: float = 2e-5
  head_lr: float = 1e-4
  head_substring: str = "vil_"
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-6
  # Global-norm gradient clipping (the reference has none): 0 disables it.
  clip_grad_norm: float = 0.0


def _per_leaf(params: Any, fn) -> Any:
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: fn(official_name(path)[0]) for path in flat})


def learning_rates(params: Any, config: OptimizerConfig) -> Any:
  """The base learning rate of every parameter (a tree of Python floats)."""
  return _per_leaf(params, lambda name: config.head_lr if config.head_substring in name
                   else config.base_lr)


def weight_decays(params: Any, config: OptimizerConfig) -> Any:
  """The decoupled weight decay of every parameter (a tree of Python floats)."""
  return _per_leaf(params, lambda name: 0.0 if any(s in name for s in NO_DECAY_SUBSTRINGS)
                   else config.weight_decay)


def init_state(params: Any) -> dict:
  """Adam moments, zero, with the parameters' shapes (and, under jit, their shardings)."""
  zeros = lambda p: jnp.zeros_like(p)
  return {"mu": jax.tree.map(zeros, params), "nu": jax.tree.map(zeros, params)}


def global_norm(grads: Any) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)))


def apply_update(params: Any, grads: Any, state: dict, lr_multiplier: jax.Array, *,
                 config: OptimizerConfig, lrs: Any, decays: Any,
                 active: Any | None = None) -> tuple[Any, dict]:
  """One AdamW step; `active` (a static tree of bools) skips untouched parameters entirely.

  Args:
    params, grads, state: the parameter tree, its gradient and `init_state`'s moments.
    lr_multiplier: the schedule's multiplier for this step (scales every group's own lr).
    lrs, decays: trees of Python floats from `learning_rates` / `weight_decays`.
    active: None (all parameters step) or a tree of bools with the parameters' structure.
  """
  if config.clip_grad_norm > 0:
    norm = global_norm(grads)
    factor = jnp.minimum(1.0, config.clip_grad_norm / (norm + 1e-6))
    grads = jax.tree.map(lambda g: g * factor, grads)
  if active is None:
    active = jax.tree.map(lambda _: True, params)

  def leaf(p, g, m, v, lr, wd, on):
    if not on:
      return p, m, v
    g = g.astype(m.dtype)
    m = config.b1 * m + (1.0 - config.b1) * g
    v = config.b2 * v + (1.0 - config.b2) * g * g
    step_lr = lr * lr_multiplier
    p = p - step_lr * m / (jnp.sqrt(v) + config.eps)
    if wd:
      p = p - step_lr * wd * p
    return p, m, v

  out = jax.tree.map(leaf, params, grads, state["mu"], state["nu"], lrs, decays, active)
  # `out` has a (p, m, v) tuple at every leaf position; split it into three trees.
  treedef = jax.tree.structure(params)
  triples = treedef.flatten_up_to(out)
  new_params = treedef.unflatten([t[0] for t in triples])
  mu = treedef.unflatten([t[1] for t in triples])
  nu = treedef.unflatten([t[2] for t in triples])
  return new_params, {"mu": mu, "nu": nu}


def warmup_linear(step, warmup_steps: float, total_steps: float):
  """`WarmupLinearSchedule`'s multiplier after `step` scheduler steps.

  step/warmup during warm-up (so 0 at step 0: the reference's very first iteration runs with
  lr 0), then a linear decay to 0 at `total_steps`. Works on ints and on traced arrays.
  """
  warm = step / max(1.0, warmup_steps)
  decay = (total_steps - step) / max(1.0, total_steps - warmup_steps)
  return jnp.where(step < warmup_steps, warm, jnp.maximum(0.0, decay))


def warmup_linear_python(step: int, warmup_steps: float, total_steps: float) -> float:
  """The same multiplier in Python floats (what the host loop logs and feeds to the step)."""
  if step < warmup_steps:
    return float(step) / float(max(1.0, warmup_steps))
  return max(0.0, float(total_steps - step) / float(max(1.0, total_steps - warmup_steps)))


def active_mask(params: Any, used_top_level: set[str]) -> Any:
  """A tree of bools: True for parameters under the given top-level modules."""
  return {name: jax.tree.map(lambda _, on=(name in used_top_level): on, sub)
          for name, sub in params.items()}
