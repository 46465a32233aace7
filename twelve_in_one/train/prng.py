"""Dropout keys: the PRNG implementations a config may name, including a fused counter hash.

`config.prng_impl` names the implementation behind the trainer's dropout keys:

* "auto" (the default): "counter_hash" on the CPU backend and "threefry2x32" (with
  `jax_threefry_partitionable` on) on TPU and GPU; `resolve_impl` decides, once per run.
* "counter_hash": keys are derived exactly as threefry derives them (`seed`, `split` and
  `fold_in` are threefry's, on two-word keys, so flax's per-module `fold_in` gives independent
  streams), but the *bits* are a keyed integer hash of each element's flat index: two rounds of
  Wellons' `lowbias32` mixer around the two key words. The bits are a pure element-wise
  function of (key, index), so XLA fuses them into the dropout's select: no random tensor is
  written to memory and no RngBitGenerator call runs, which is what makes CPU training steps
  faster (measured in BENCHMARKS.md, "Dropout bits from a fused counter hash"). The bits are
  the same under every sharding, since they depend only on the global index.
* "rbg", "unsafe_rbg", "threefry2x32": JAX's own. The counter hash's gain was measured on CPU
  only, so on TPU and GPU "auto" keeps JAX's default generator, whose partitionable form draws
  each shard's bits where the shard lives, without communication.

Why a hash is enough here: dropout needs masks that are unbiased, independent across sites and
steps, and uncorrelated within a tensor; it needs no cryptographic strength. `lowbias32` is a
bijection of 32-bit words with near-ideal avalanche (bias ~0.17 on Wellons' measure), so a
stream never repeats within a tensor, and two keyed rounds decorrelate streams whose keys differ
in either word. `tests/test_prng.py` checks the keep rate, byte uniformity, the correlation of
neighbours and of streams, and sharding invariance. The masks differ from the official code's
(torch's Philox) whatever generator is used, so nothing that the parity tests check depends
on this choice; parameter init always uses threefry.
"""

from __future__ import annotations

import math
from typing import Hashable

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp

AUTO = "auto"
THREEFRY = "threefry2x32"
BUILTIN_IMPLS = (THREEFRY, "rbg", "unsafe_rbg")
COUNTER_HASH = "counter_hash"
IMPLS = (COUNTER_HASH,) + BUILTIN_IMPLS
# What `config.prng_impl` may say.
CHOICES = (AUTO,) + IMPLS

# Wellons' lowbias32 constants (https://nullprogram.com/blog/2018/07/31/), and the golden
# ratio's 32-bit fraction, which spreads consecutive indices before the first round.
_MUL1, _MUL2, _GOLDEN = 0x7FEB352D, 0x846CA68B, 0x9E3779B9


def _lowbias32(x: jax.Array) -> jax.Array:
  x = x ^ (x >> 16)
  x = x * jnp.uint32(_MUL1)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(_MUL2)
  return x ^ (x >> 16)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
  """Each element's row-major flat index as uint32, built from iotas (so it fuses)."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  return index


def _hash_words(key: jax.Array, shape: tuple[int, ...], stream: int = 0) -> jax.Array:
  """32 random bits per element of `shape` from a two-word key."""
  size = math.prod(shape)
  if size >= 2**32:
    raise ValueError(f"counter_hash: cannot draw {size} values in one call (at most 2**32 - 1 "
                     f"per call; the flat index is 32-bit), shape {shape}")
  key = key.astype(jnp.uint32)
  first = key[0] ^ jnp.uint32((stream * _GOLDEN) & 0xFFFFFFFF)
  x = _lowbias32(_flat_index(shape) * jnp.uint32(_GOLDEN) ^ first)
  # The constant keeps the all-zero key (seed 0) off lowbias32's fixed point at 0.
  return _lowbias32(x ^ (key[1] + jnp.uint32(_GOLDEN)))


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
  shape = tuple(shape)
  if bit_width == 64:
    high = _hash_words(key, shape, stream=1).astype(jnp.uint64)
    low = _hash_words(key, shape, stream=2).astype(jnp.uint64)
    return (high << 32) | low
  if bit_width not in (8, 16, 32):
    raise ValueError(f"counter_hash: bit_width must be 8, 16, 32 or 64, got {bit_width}")
  bits = _hash_words(key, shape)
  if bit_width == 32:
    return bits
  # The top bits are the best mixed ones of lowbias32's output.
  return (bits >> (32 - bit_width)).astype(jnp.dtype(f"uint{bit_width}"))


_THREEFRY = jex_random.threefry_prng_impl
COUNTER_HASH_SPEC = jex_random.define_prng_impl(
    key_shape=(2,), seed=_THREEFRY.seed, split=_THREEFRY.split, fold_in=_THREEFRY.fold_in,
    random_bits=_random_bits, name=COUNTER_HASH, tag="ch")


def resolve_impl(name: str, backend: str | None = None) -> str:
  """The implementation `config.prng_impl` stands for on `backend`: one of `IMPLS`.

  "auto" is "counter_hash" on "cpu" and "threefry2x32" on any other backend ("tpu", "gpu",
  ...); explicit names stand for themselves. Whenever the result is threefry, JAX's
  `jax_threefry_partitionable` is switched on, so that sharded draws need no communication
  (it is already JAX's default; set explicitly so that the run does not depend on that).

  Args:
    name: the config's value.
    backend: the platform the run computes on (default: `jax.default_backend()`); only "auto"
      reads it.
  """
  if name == AUTO:
    backend = jax.default_backend() if backend is None else backend
    impl = COUNTER_HASH if backend == "cpu" else THREEFRY
  elif name in IMPLS:
    impl = name
  else:
    raise ValueError(f"config.prng_impl={name!r}; expected one of {list(CHOICES)}")
  if impl == THREEFRY:
    jax.config.update("jax_threefry_partitionable", True)
  return impl


def describe(name: str, impl: str, backend: str | None = None) -> str:
  """The run log's line for the dropout PRNG, e.g. "dropout PRNG: counter_hash (auto on cpu)"."""
  if name != AUTO:
    return f"dropout PRNG: {impl}"
  backend = jax.default_backend() if backend is None else backend
  return f"dropout PRNG: {impl} (auto on {backend})"


def resolve(name: str, backend: str | None = None) -> str | Hashable:
  """What `jax.random.key(..., impl=...)` takes for a config's `prng_impl` name."""
  impl = resolve_impl(name, backend)
  return COUNTER_HASH_SPEC if impl == COUNTER_HASH else impl


def dropout_key(seed: int, name: str) -> jax.Array:
  """The base dropout key of a run: `seed` under the named implementation ("auto" allowed)."""
  return jax.random.key(seed, impl=resolve(name))
