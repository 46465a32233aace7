"""The dropout PRNG `counter_hash` (train/prng.py): statistics, key derivation, sharding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from twelve_in_one.train import prng

SIZE = 1 << 20


def _uniforms(key, shape=(SIZE,)):
  return np.asarray(jax.random.uniform(key, shape), np.float64)


def test_keys_derive_as_threefry_does():
  ours = prng.dropout_key(7, prng.COUNTER_HASH)
  theirs = jax.random.key(7, impl="threefry2x32")
  np.testing.assert_array_equal(jax.random.key_data(ours), jax.random.key_data(theirs))
  np.testing.assert_array_equal(jax.random.key_data(jax.random.fold_in(ours, 3)),
                                jax.random.key_data(jax.random.fold_in(theirs, 3)))
  np.testing.assert_array_equal(jax.random.key_data(jax.random.split(ours, 4)),
                                jax.random.key_data(jax.random.split(theirs, 4)))


def test_bits_are_uniform_and_neighbours_uncorrelated():
  key = jax.random.fold_in(prng.dropout_key(0, prng.COUNTER_HASH), 11)
  bits = np.asarray(jax.random.bits(key, (SIZE,)))
  # Every byte position: chi-square over 256 bins, df = 255; 400 is p < 1e-8.
  for shift in (0, 8, 16, 24):
    counts = np.bincount((bits >> shift) & 0xFF, minlength=256)
    expected = SIZE / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400, (shift, chi2)
  # Every bit is set half the time (5 sigma).
  ones = np.array([((bits >> b) & 1).mean() for b in range(32)])
  assert np.all(np.abs(ones - 0.5) < 5 * 0.5 / np.sqrt(SIZE)), ones
  u = _uniforms(key)
  assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / SIZE)
  # Lag-1 correlation along the flat index and along the last axis of a 2-d draw.
  assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5 / np.sqrt(SIZE)
  grid = _uniforms(key, (1024, 1024))
  assert abs(np.corrcoef(grid[:-1].ravel(), grid[1:].ravel())[0, 1]) < 5 / np.sqrt(SIZE)


def test_streams_of_different_keys_are_independent():
  base = prng.dropout_key(0, prng.COUNTER_HASH)
  streams = [_uniforms(jax.random.fold_in(base, i)) for i in range(4)]
  # (threefry's own derivation makes `split(k, 2)[1]` equal `fold_in(k, 1)`, so split another.)
  streams.append(_uniforms(jax.random.split(jax.random.fold_in(base, 99), 2)[1]))
  for i in range(len(streams)):
    for j in range(i + 1, len(streams)):
      assert abs(np.corrcoef(streams[i], streams[j])[0, 1]) < 5 / np.sqrt(SIZE), (i, j)
  # The seed-0 key itself (all-zero words) is not a degenerate stream.
  first = np.asarray(jax.random.bits(base, (4,)))
  assert len(set(first.tolist())) == 4 and 0 not in first.tolist()


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_flax_dropout_keeps_the_right_fraction(rate):
  key = prng.dropout_key(3, prng.COUNTER_HASH)
  x = jnp.ones((64, 101, 160), jnp.float32)
  out = nn.Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": key})
  kept = float((out != 0).mean())
  assert abs(kept - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / x.size), kept
  np.testing.assert_allclose(np.unique(np.asarray(out)), [0.0, 1 / (1 - rate)], rtol=1e-6)


def test_other_widths_and_batched_keys():
  key = prng.dropout_key(1, prng.COUNTER_HASH)
  for dtype in (jnp.uint8, jnp.uint16):
    bits = np.asarray(jax.random.bits(key, (SIZE // 4,), dtype))
    assert bits.dtype == np.dtype(dtype)
    assert abs(bits.mean() / np.iinfo(dtype).max - 0.5) < 0.01
  keys = jax.random.split(key, 3)
  batched = np.asarray(jax.vmap(lambda k: jax.random.bits(k, (5,)))(keys))
  one_by_one = np.stack([np.asarray(jax.random.bits(k, (5,))) for k in keys])
  np.testing.assert_array_equal(batched, one_by_one)


def test_same_bits_under_every_sharding():
  mesh = jax.make_mesh((4, 2), ("data", "model"))
  key = prng.dropout_key(5, prng.COUNTER_HASH)
  draw = lambda k: jax.random.bernoulli(k, 0.9, (16, 12, 10))
  single = np.asarray(jax.jit(draw)(key))
  for spec in (PartitionSpec("data"), PartitionSpec("data", "model"), PartitionSpec(None, "model")):
    sharded = jax.jit(draw, out_shardings=NamedSharding(mesh, spec))(key)
    np.testing.assert_array_equal(np.asarray(sharded), single, err_msg=str(spec))


def test_unknown_names_and_oversized_draws_are_errors():
  with pytest.raises(ValueError, match=r"config.prng_impl='philox'.*counter_hash"):
    prng.resolve("philox")
  assert prng.resolve("rbg") == "rbg"
  with pytest.raises(ValueError, match="at most 2\\*\\*32 - 1"):
    jax.jit(lambda k: jax.random.bits(k, (1 << 16, 1 << 16))).lower(
        prng.dropout_key(0, prng.COUNTER_HASH))


def test_auto_is_counter_hash_on_cpu_and_the_same_key_as_naming_it():
  assert prng.resolve_impl("auto", backend="cpu") == prng.COUNTER_HASH
  assert prng.describe("auto", prng.COUNTER_HASH, "cpu") == \
      "dropout PRNG: counter_hash (auto on cpu)"
  # These tests run on the CPU backend: "auto" there is today's counter_hash, bit for bit.
  assert jax.default_backend() == "cpu"
  auto, named = prng.dropout_key(3, "auto"), prng.dropout_key(3, prng.COUNTER_HASH)
  np.testing.assert_array_equal(np.asarray(jax.random.bits(jax.random.fold_in(auto, 2), (64,))),
                                np.asarray(jax.random.bits(jax.random.fold_in(named, 2), (64,))))


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_auto_is_partitionable_threefry_on_accelerators(backend):
  previous = jax.config.jax_threefry_partitionable
  try:
    jax.config.update("jax_threefry_partitionable", False)
    assert prng.resolve_impl("auto", backend=backend) == "threefry2x32"
    assert jax.config.jax_threefry_partitionable
    assert prng.describe("auto", "threefry2x32", backend) == \
        f"dropout PRNG: threefry2x32 (auto on {backend})"
    assert prng.resolve("auto", backend=backend) == "threefry2x32"
  finally:
    jax.config.update("jax_threefry_partitionable", previous)


def test_explicit_names_stand_for_themselves_on_every_backend():
  for backend in ("cpu", "tpu", "gpu"):
    for name in prng.IMPLS:
      assert prng.resolve_impl(name, backend=backend) == name
  assert prng.describe("rbg", "rbg") == "dropout PRNG: rbg"
  with pytest.raises(ValueError, match=r"config.prng_impl='Auto'.*'auto', 'counter_hash', "
                                       r"'threefry2x32', 'rbg', 'unsafe_rbg'"):
    prng.resolve_impl("Auto", backend="tpu")
