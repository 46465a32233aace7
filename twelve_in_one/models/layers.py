"""Building blocks shared by both streams: Dense with logical axes, LayerNorm, GELU, attention.

Everything here reproduces the official PyTorch numerics:
* LayerNorm is the TF-style `BertLayerNorm`: biased variance of the centred input, eps inside
  the square root (1e-12), then `scale * x + bias`. Flax's `nn.LayerNorm` computes the variance
  as E[x²]-E[x]², which rounds differently, so it is not used.
* GELU is the exact erf form.
* Masks are additive `(1 - mask) * -10000`, not -inf, so a fully padded row still gives a
  uniform softmax exactly as the reference does.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# The reference's additive mask value. Not -inf: outputs at padded positions must match too.
MASK_VALUE = -10000.0

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
          "float64": jnp.float64}


def compute_dtype(name: str):
  return DTYPES[name]


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x·Φ(x), as `x * 0.5 * (1 + erf(x / sqrt(2)))` in the reference."""
  return jax.nn.gelu(x, approximate=False)


def dense(features: int, axes: tuple[str, str], *, name: str, dtype, init_std: float,
          use_bias: bool = True) -> nn.Dense:
  """A Dense layer whose kernel and bias carry logical axis names for sharding.

  Init follows the reference: N(0, initializer_range) kernels and zero biases.
  """
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(init_std), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
      name=name)


class LayerNorm(nn.Module):
  """The reference `BertLayerNorm`, computed in at least float32 whatever the compute dtype."""
  axis_name: str
  eps: float = 1e-12

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                             (self.axis_name,)),
                       (width,), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           (self.axis_name,)),
                      (width,), jnp.float32)
    stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
    xf = x.astype(stats_dtype)
    mean = xf.mean(-1, keepdims=True)
    centred = xf - mean
    variance = (centred * centred).mean(-1, keepdims=True)
    normed = centred / jnp.sqrt(variance + self.eps)
    out = scale.astype(stats_dtype) * normed + bias.astype(stats_dtype)
    return out.astype(x.dtype)


def additive_mask(mask: jax.Array, dtype) -> jax.Array:
  """[B, L] 0/1 mask -> [B, 1, 1, L] additive mask, broadcast over heads and queries."""
  return ((1.0 - mask.astype(dtype)) * MASK_VALUE)[:, None, None, :]


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  batch, length, width = x.shape
  return x.reshape(batch, length, num_heads, width // num_heads)


def multi_head_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                         mask_bias: jax.Array, *, num_heads: int,
                         dropout: Callable[[jax.Array], jax.Array] | None,
                         impl: str = "einsum") -> tuple[jax.Array, jax.Array | None]:
  """Scaled dot-product attention over already-projected, head-merged inputs.

  Args:
    query: [B, Lq, H*D]; key, value: [B, Lk, H*D].
    mask_bias: [B, 1, 1, Lk] additive mask (see `additive_mask`).
    num_heads: H.
    dropout: applied to the attention probabilities (None when deterministic).
    impl: "einsum" writes the reference math out; "dot_product_attention" uses the fused
      `jax.nn.dot_product_attention` (only without probability dropout, which it lacks).

  Returns:
    The context [B, Lq, H*D] and the probabilities [B, H, Lq, Lk] (None with the fused kernel).
  """
  batch, q_len, width = query.shape
  head_dim = width // num_heads
  q = split_heads(query, num_heads)
  k = split_heads(key, num_heads)
  v = split_heads(value, num_heads)
  if impl == "dot_product_attention" and dropout is None:
    context = jax.nn.dot_product_attention(q, k, v, bias=mask_bias.astype(q.dtype),
                                           scale=1.0 / math.sqrt(head_dim))
    return context.reshape(batch, q_len, width), None
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
  # Softmax in float32 at least: bf16 logits lose the -10000 mask's relative precision.
  scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32)) + mask_bias
  probs = jax.nn.softmax(scores, axis=-1)
  if dropout is not None:
    probs = dropout(probs)
  context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
  return context.reshape(batch, q_len, width), probs


class ResidualOutput(nn.Module):
  """dense -> dropout -> LayerNorm(· + residual): the reference's `*Output` / `*SelfOutput`."""
  features: int
  axes: tuple[str, str]
  dropout_rate: float
  dtype: object
  init_std: float
  eps: float = 1e-12
  dense_name: str = "dense"
  norm_name: str = "LayerNorm"

  @nn.compact
  def __call__(self, hidden: jax.Array, residual: jax.Array, deterministic: bool) -> jax.Array:
    hidden = dense(self.features, self.axes, name=self.dense_name, dtype=self.dtype,
                   init_std=self.init_std)(hidden)
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    return LayerNorm(self.axes[1], self.eps, name=self.norm_name)(hidden + residual)


class Intermediate(nn.Module):
  """The FFN's expansion: dense -> exact GELU."""
  features: int
  axes: tuple[str, str]
  dtype: object
  init_std: float

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    return gelu(dense(self.features, self.axes, name="dense", dtype=self.dtype,
                      init_std=self.init_std)(hidden))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Logical sharding constraint on an activation (a no-op without rules and a mesh)."""
  return nn.with_logical_constraint(x, tuple(names))
