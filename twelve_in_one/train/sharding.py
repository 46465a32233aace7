"""The device mesh, logical-axis rules, and the shardings of parameters and batches.

Every sharding decision is made in logical names (the model names its parameter and activation
axes); the rules that map names to the mesh axes (`data`, `fsdp`, `tensor`) come from the config
(see `configs/mesh.py`). This is the only module that mentions mesh axes.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# The batch is split over every data-parallel axis; sequence axes are never sharded.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 in {axis: size} so the product equals the number of devices."""
  unknown = [a for a in MESH_AXES if sizes.get(a, 1) == -1]
  if len(unknown) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {unknown} in {sizes}")
  extra = set(sizes) - set(MESH_AXES)
  if extra:
    raise ValueError(f"mesh: unknown axis name(s) {sorted(extra)}; expected {MESH_AXES}")
  known = int(np.prod([sizes.get(a, 1) for a in MESH_AXES if sizes.get(a, 1) != -1]))
  shape = []
  for axis in MESH_AXES:
    size = sizes.get(axis, 1)
    if size == -1:
      if num_devices % known:
        raise ValueError(f"mesh: {num_devices} devices are not divisible by the product "
                         f"{known} of the fixed axes in {sizes}")
      size = num_devices // known
    shape.append(int(size))
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh: axis sizes {dict(zip(MESH_AXES, shape))} multiply to "
                     f"{int(np.prod(shape))}, but there are {num_devices} devices")
  return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all devices with Auto axes (logical constraints need Auto, not Explicit)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(dict(sizes), len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh, name: str) -> P:
  """Drops mesh axes from dimensions they do not divide (small or odd-sized parameters)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    axes_tuple = axes if isinstance(axes, tuple) else (axes,)
    size = int(np.prod([mesh.shape[a] for a in axes_tuple]))
    if dim % size:
      logging.debug("sharding: %s dim %d not divisible by %s=%d; replicated", name, dim,
                    axes_tuple, size)
      fitted.append(None)
    else:
      fitted.append(axes)
  return P(*fitted)


def tree_shardings(abstract_tree: Any, logical_specs: Any, mesh: Mesh,
                   rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for a tree from its logical specs and the config's rules."""
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  flat_shapes = traverse_util.flatten_dict(abstract_tree, sep="/")
  flat_specs = traverse_util.flatten_dict(mesh_specs, sep="/")
  missing = sorted(set(flat_shapes) - set(flat_specs))
  if missing:
    raise ValueError(f"sharding: no logical axis names for parameter(s) {missing[:5]}")
  shardings = {name: NamedSharding(mesh, _fit_spec(flat_specs[name], flat_shapes[name].shape,
                                                   mesh, name))
               for name in flat_shapes}
  return traverse_util.unflatten_dict(shardings, sep="/")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over the data-parallel axes; everything else replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def global_batch(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded over the batch axes.

  Raises ValueError naming the leaf when its rows cannot be split evenly.
  """
  sharding = batch_sharding(mesh)
  local_parts = data_parallel_size(mesh) // jax.process_count()
  out = {}
  for name, value in host_batch.items():
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[0] % max(local_parts, 1):
      raise ValueError(f"batch leaf {name!r}: {value.shape[0] if value.ndim else 'scalar'} "
                       f"rows on this process cannot be split over its {local_parts} "
                       "data-parallel shards; make the per-process batch a multiple of it")
    out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out
