"""The pieces of the official optimizer that optax does not have, as GradientTransformations.

`optimizer.build` chains them with optax's own (`clip_by_global_norm`, `scale_by_radam`,
`add_decayed_weights`):

* `scale_by_adam_without_bias_correction`: `pytorch_transformers` AdamW with
  `correct_bias=False` (BertAdam's update). `optax.scale_by_adam` always corrects the bias,
  which changes every step size (the first by a factor 1 / 0.1 on the first moment).
* `scale_by_learning_rates`: each parameter's own learning rate (a tree shaped like the
  parameters) times the schedule's multiplier, which arrives as the extra argument
  `lr_multiplier` of `update` (the host steps the schedule, as the official loop steps its
  torch schedulers; see `lr_schedule.py`).
* `decay_updated_parameters`: the decoupled weight decay of `pytorch_transformers` AdamW,
  applied to the already updated parameter (`p <- p1 - lr * wd * p1`, `p1 = p + update`), where
  `optax.add_decayed_weights` decays the old one.
* `only_reached`: which parameters a task's update may touch, as torch decides it from
  `.grad`: `skip` (torch >= 2, `zero_grad(set_to_none=True)`) updates the parameters the
  task's loss reaches; `torch1` (torch 1.x `zero_grad()`, which zeroes `.grad` and keeps it)
  also updates every parameter that some earlier step reached, with a zero gradient, so its
  moments decay and its weight decays. The state remembers which parameters were reached.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

UNUSED_PARAMS_MODES = ("torch1", "skip")


def scale_by_adam_without_bias_correction(b1: float, b2: float,
                                          eps: float) -> optax.GradientTransformation:
  """`m / (sqrt(v) + eps)` with `m`, `v` the uncorrected moments (state: ScaleByAdamState).

  The state has optax's Adam layout (and its count), so RAdam's state has the same structure.
  """

  def init(params):
    zeros = lambda p: jnp.zeros_like(p)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=jax.tree.map(zeros, params),
                                  nu=jax.tree.map(zeros, params))

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g.astype(m.dtype), updates, state.mu)
    nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * g.astype(v.dtype) * g.astype(v.dtype),
                      updates, state.nu)
    scaled = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return scaled, optax.ScaleByAdamState(count=optax.safe_increment(state.count), mu=mu,
                                          nu=nu)

  return optax.GradientTransformation(init, update)


def scale_by_learning_rates(learning_rates: Any) -> optax.GradientTransformationExtraArgs:
  """`-lr * lr_multiplier * update`, `lr` from a tree like the parameters (floats or arrays
  broadcasting against their leaves), `lr_multiplier` an extra argument of `update`."""

  def update(updates, state, params=None, *, lr_multiplier=1.0, **extra_args):
    del params, extra_args
    return jax.tree.map(lambda u, lr: -(lr * lr_multiplier) * u, updates,
                        learning_rates), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def decay_updated_parameters(weight_decay: float, mask: Any,
                             learning_rates: Any) -> optax.GradientTransformationExtraArgs:
  """Turns an update `u` into the one that also decays the updated parameter:
  `p1 = p + u; p2 = p1 - lr * lr_multiplier * weight_decay * p1; return p2 - p`.

  `mask` (a tree of bools like the parameters) says which parameters decay. `p2 - p` is exact
  whenever `p2` is within a factor 2 of `p` (Sterbenz), so `optax.apply_updates` then gives
  `p2` itself, the value torch's two in-place steps leave.
  """

  def update(updates, state, params=None, *, lr_multiplier=1.0, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("decay_updated_parameters needs the parameters")

    def leaf(u, p, decays, lr):
      if not decays:
        return u
      updated = p + u
      return (updated - (lr * lr_multiplier * weight_decay) * updated) - p

    return jax.tree.map(leaf, updates, params, mask, learning_rates), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


class ReachedState(NamedTuple):
  """`touched[i]`: whether parameter leaf i was ever reached (flattening order); `inner`."""
  touched: jax.Array
  inner: Any


def param_leaf_index(params: Any) -> Callable[[tuple, Any], int | None]:
  """A function (state leaf path, leaf) -> index of the parameter leaf it mirrors, or None.

  A state leaf mirrors parameter i when its key path ends with parameter i's key path and it
  has that parameter's shape (Adam's moments do; counts and flags do not). This finds the
  parameter-shaped parts of any optax state without knowing its layout.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  index = {tuple(path): (i, tuple(np.shape(leaf))) for i, (path, leaf) in enumerate(flat)}
  depths = sorted({len(path) for path in index})

  def find(path: tuple, leaf: Any) -> int | None:
    for depth in depths:
      if depth <= len(path):
        hit = index.get(tuple(path[len(path) - depth:]))
        if hit is not None and hit[1] == tuple(np.shape(leaf)):
          return hit[0]
    return None

  return find


def _select(on: Any, new: jax.Array, old: jax.Array) -> jax.Array:
  """`new` where `on`, else `old`; `on` is a Python/numpy bool (static) or a traced one."""
  if isinstance(on, (bool, np.bool_)):
    return new if on else old
  return jnp.where(on, new, old)


def only_reached(inner: optax.GradientTransformation, reached: Any, *, mode: str,
                 trainable: Any | None = None) -> optax.GradientTransformationExtraArgs:
  """Applies `inner` to the parameters a step may touch; the others keep value and state.

  Args:
    inner: the update (moments, learning rates, decay).
    reached: a tree of bools like the parameters: which ones this task's loss reaches.
    mode: "skip" touches the reached parameters only; "torch1" also every parameter that an
      earlier step reached (`ReachedState.touched`), which then steps with a zero gradient.
    trainable: None, or a tree like the parameters of bools or of bool arrays broadcasting
      against their leaves (per layer of a stacked leaf): parameters kept out of the optimizer
      (frozen) are never touched.

  The state is the same for every `reached`, so each task's step can be built with its own
  mask around one shared state.
  """
  if mode not in UNUSED_PARAMS_MODES:
    raise ValueError(f"unused_params={mode!r}; expected one of {UNUSED_PARAMS_MODES}")
  inner = optax.with_extra_args_support(inner)
  reached_leaves = [bool(r) for r in jax.tree.leaves(reached)]

  def init(params):
    return ReachedState(touched=jnp.zeros([len(jax.tree.leaves(params))], jnp.bool_),
                        inner=inner.init(params))

  def update(updates, state, params=None, **extra_args):
    leaves, treedef = jax.tree.flatten(updates)
    if len(leaves) != len(reached_leaves):
      raise ValueError(f"only_reached: the reached mask has {len(reached_leaves)} leaves, the "
                       f"update {len(leaves)}")
    keep = (jax.tree.leaves(trainable) if trainable is not None
            else [True] * len(leaves))
    on = []
    for i, (hit, can) in enumerate(zip(reached_leaves, keep)):
      can_any = bool(np.any(can))
      if mode == "torch1" and not hit and can_any:
        step = state.touched[i]          # dynamic: reached by an earlier step?
      else:
        step = hit and can_any
      if can_any and not bool(np.all(can)):
        step = jnp.logical_and(step, jnp.asarray(can))
      on.append(step)
    new_updates, new_inner = inner.update(updates, state.inner, params, **extra_args)
    new_updates = treedef.unflatten([
        _select(s, u, jnp.zeros_like(u)) for s, u in zip(on, jax.tree.leaves(new_updates))])
    find = param_leaf_index(updates)

    def select_state(path, new, old):
      i = find(path, new)
      return new if i is None else _select(on[i], new, old)

    new_inner = jax.tree_util.tree_map_with_path(select_state, new_inner, state.inner)
    touched = state.touched | jnp.asarray(
        [hit and bool(np.any(can)) for hit, can in zip(reached_leaves, keep)], jnp.bool_)
    return new_updates, ReachedState(touched=touched, inner=new_inner)

  return optax.GradientTransformationExtraArgs(init, update)
