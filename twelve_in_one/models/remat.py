"""Rematerialisation that XLA's schedulers cannot undo: recompute a layer after its cotangent.

`jax.checkpoint` (Linen's `nn.remat`) stores a layer's inputs and recomputes the layer in the
backward pass, but the recomputation depends only on those stored inputs. On backends whose
schedulers do not honour the optimization barrier it leaves (XLA:CPU removes it before
scheduling), the scheduler is free to run every layer's recomputation early and keep all the
activations alive: the step's temporaries were the same with and without `nn.remat`
(BENCHMARKS.md). Here the backward rule instead makes the recomputation's inputs a
data dependency of the cotangent arriving from the layers above (`x + 0 * g[0]`, exact for any
finite `g`), so no schedule can start it before that layer's backward turn.

The layer is re-run with the very dropout keys of its forward pass: the backward rule applies
the same module, unbound, to the same parameters with the key Flax would derive for that
module's scope, so `remat=True` gives the same forward values and, to float32 rounding, the same
gradients as `remat=False` (tests/test_model.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

DROPOUT = "dropout"


def _tie(tree: Any, cotangent: Any) -> Any:
  """Makes each floating array of `tree` depend on `cotangent` without changing its value."""
  # The first element of each floating cotangent leaf, times zero: x + 0.0 == x for every
  # finite x (a non-finite cotangent makes the gradients non-finite anyway). XLA does not fold
  # `c * 0.0` for floats, since that is not an identity under IEEE arithmetic, so the
  # dependency survives every simplification.
  firsts = [jnp.ravel(leaf)[0].astype(jnp.float32) for leaf in jax.tree.leaves(cotangent)
            if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)]
  if not firsts:
    raise ValueError("recompute_in_backward: the layer's output has no floating array")
  zero = sum(firsts) * 0.0

  def tie_leaf(leaf):
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf + zero.astype(leaf.dtype)
    return leaf
  return jax.tree.map(tie_leaf, tree)


def _dropout_key(module: nn.Module) -> tuple[jax.Array | None, tuple]:
  """The dropout key of `module`'s scope as Flax holds it: a base key and a static suffix.

  Flax folds a scope's whole name path into its key in one hash when a key is drawn, so the
  recomputation must see the same base key under the same path, not a key materialised at
  the layer (which would give other masks).
  """
  rngs = module.scope.rngs
  if DROPOUT not in rngs:
    return None, ()
  lazy = rngs[DROPOUT]
  return lazy.rng, tuple(lazy.suffix)


class _AtPath(nn.Module):
  """Applies `make_layer(name, parent)` nested under `scope_names`, as in the full model."""
  make_layer: Callable[[str | None, nn.Module | None], nn.Module]
  scope_names: tuple

  @nn.compact
  def __call__(self, *args: Any) -> Any:
    if len(self.scope_names) == 1:
      return self.make_layer(self.scope_names[0], self)(*args)
    return _AtPath(self.make_layer, self.scope_names[1:], name=self.scope_names[0])(*args)


def _nest(path: tuple, tree: Any) -> Any:
  for name in reversed(path):
    tree = {name: tree}
  return tree


def recompute_in_backward(module: nn.Module, *args: Any,
                          static_argnums: Sequence[int] = ()) -> Any:
  """Calls `module(*args)`, storing only its parameters, inputs and dropout key for backward.

  Call it in place of `module(*args)` once the parameters exist; at init, call the module
  itself (creating parameters needs the bound call, and nothing is differentiated then).

  Args:
    module: a Linen submodule, constructed (named) in the caller's compact method.
    *args: its call arguments; arrays are differentiated, `None` passes through.
    static_argnums: positions in `args` of Python values (e.g. `deterministic`), which the
      backward pass receives as constants.

  Returns:
    What `module(*args)` returns, with a backward rule that recomputes the module once the
    cotangent of its output exists.
  """
  static = {i: args[i] for i in static_argnums}
  dynamic_positions = [i for i in range(len(args)) if i not in static]
  make_layer = lambda name, parent: module.clone(parent=parent, name=name)
  suffix_of_key: list[tuple] = []   # the static part of the dropout key, set by `forward`

  def merge(dynamic_args: Sequence[Any]) -> list[Any]:
    merged = dict(static)
    merged.update(zip(dynamic_positions, dynamic_args))
    return [merged[i] for i in range(len(args))]

  def pure(params: Any, key: jax.Array | None, *dynamic_args: Any) -> Any:
    if key is None:
      return make_layer(None, None).apply({"params": params}, *merge(dynamic_args))
    path = suffix_of_key[0]
    if not path:
      raise ValueError(f"recompute_in_backward: module {module.name!r} has no scope path")
    nested = _AtPath(make_layer, path, parent=None)
    return nested.apply({"params": _nest(path, params)}, *merge(dynamic_args),
                        rngs={DROPOUT: key})

  def call(mdl: nn.Module, *dynamic_args: Any) -> Any:
    return mdl(*merge(dynamic_args))

  def forward(mdl: nn.Module, *dynamic_args: Any) -> tuple[Any, tuple]:
    params, (key, suffix) = mdl.variables["params"], _dropout_key(mdl)
    suffix_of_key[:] = [suffix]
    # The forward output comes from the same pure function as the recomputation, so both see
    # one set of dropout masks by construction.
    return pure(params, key, *dynamic_args), (params, key, dynamic_args)

  def backward(residuals: tuple, output_cotangent: Any) -> tuple:
    params, key, dynamic_args = residuals
    dynamic_args = _tie(dynamic_args, output_cotangent)
    _, vjp = jax.vjp(lambda p, *a: pure(p, key, *a), params, *dynamic_args)
    params_cotangent, *args_cotangent = vjp(output_cotangent)
    return ({"params": params_cotangent}, *args_cotangent)

  lifted: Callable[..., Any] = nn.custom_vjp(call, forward_fn=forward, backward_fn=backward)
  return lifted(module, *[args[i] for i in dynamic_positions])
