"""The device mesh, logical-axis rules, and the shardings of parameters and batches.

Every sharding decision is made in logical names (the model names its parameter and activation
axes); the rules that map names to the mesh axes (`data`, `fsdp`, `tensor`) come from the config
(see `configs/mesh.py`). This is the only module that mentions mesh axes.
"""

from __future__ import annotations

import collections
import logging
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# The batch is split over every data-parallel axis; sequence axes are never sharded.
BATCH_AXES = ("data", "fsdp")
# What a DCN "granule" is: a TPU slice (devices' `slice_index`) or a process (e.g. one GPU host
# of a multi-node job, where devices carry no slice index).
DCN_GRANULES = ("slice", "process")


def mesh_shape(sizes: dict[str, int], num_devices: int, *, key: str = "config.mesh.axes",
               unit: str = "devices") -> tuple[int, ...]:
  """Resolves {axis: size} (one size may be -1: the rest) to a shape over `num_devices`.

  Missing axes have size 1. Every error is one line naming `key` and the numbers; `unit` names
  what is counted ("devices", "devices per slice", "slices").
  """
  extra = sorted(set(sizes) - set(MESH_AXES))
  if extra:
    raise ValueError(f"{key}.{extra[0]}: unknown mesh axis; expected one of "
                     f"{', '.join(MESH_AXES)}")
  values = {axis: sizes.get(axis, 1) for axis in MESH_AXES}
  for axis, size in values.items():
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or (
        size < 1 and size != -1):
      raise ValueError(f"{key}.{axis}={size!r}: a mesh axis size must be a positive integer "
                       "or -1 (the remaining devices)")
  unknown = [axis for axis, size in values.items() if size == -1]
  if len(unknown) > 1:
    raise ValueError(f"{' and '.join(f'{key}.{a}=-1' for a in unknown)}: at most one mesh "
                     "axis may be -1")
  known = math.prod(size for size in values.values() if size != -1)
  if unknown:
    if num_devices % known:
      raise ValueError(f"{key}.{unknown[0]}=-1: {num_devices} {unit} are not divisible by "
                       f"{known}, the product of the other axes")
    values[unknown[0]] = num_devices // known
  shape = tuple(int(values[axis]) for axis in MESH_AXES)
  if math.prod(shape) != num_devices:
    described = " x ".join(f"{a}={s}" for a, s in zip(MESH_AXES, shape))
    raise ValueError(f"{key}: {described} multiply to {math.prod(shape)}, but there are "
                     f"{num_devices} {unit}")
  return shape


def _granule_of(device: Any, granule: str) -> int:
  """The DCN group of a device: its slice (0 when the platform has no slices) or process."""
  if granule == "process":
    return int(device.process_index)
  return int(getattr(device, "slice_index", 0))


def device_grid(sizes: dict[str, int], devices: Sequence[Any], *,
                dcn_sizes: dict[str, int] | None = None,
                dcn_granule: str = "slice") -> np.ndarray:
  """The devices arranged as a (data, fsdp, tensor) array, following the network topology.

  `sizes` are the axis sizes within one DCN granule (a slice, over ICI); `dcn_sizes` the
  sizes across granules (over DCN, default: `data` takes them all). The mesh's axis sizes are
  their products. With one granule, `mesh_utils.create_device_mesh` places the axes on the
  physical torus (on TPU; other platforms keep the device order); with several,
  `mesh_utils.create_hybrid_device_mesh` builds one such grid per granule and tiles them, so a
  step's heavy collectives (fsdp, tensor) stay inside a slice and only the DCN axes cross
  slices. Takes any objects with the attributes JAX devices have, which is how the
  multi-slice layout is testable without slices.
  """
  if dcn_granule not in DCN_GRANULES:
    raise ValueError(f"config.mesh.dcn_granule={dcn_granule!r}: expected one of "
                     f"{', '.join(DCN_GRANULES)}")
  devices = list(devices)
  if not devices:
    raise ValueError("mesh: no devices")
  per_granule_counts = collections.Counter(_granule_of(d, dcn_granule) for d in devices)
  if len(set(per_granule_counts.values())) > 1:
    raise ValueError(f"config.mesh.dcn_granule={dcn_granule}: the {len(per_granule_counts)} "
                     f"{dcn_granule}s hold unequal numbers of devices "
                     f"{sorted(per_granule_counts.values())}; a hybrid mesh needs equal ones")
  num_granules = len(per_granule_counts)
  unit = "slices" if dcn_granule == "slice" else "processes"
  try:
    dcn_shape = mesh_shape(dict({"data": -1} if dcn_sizes is None else dcn_sizes),
                           num_granules, key="config.mesh.dcn_axes", unit=unit)
  except ValueError as error:
    if dcn_granule == "slice" and not hasattr(devices[0], "slice_index"):
      raise ValueError(f"{error} (these devices have no slice index; "
                       "config.mesh.dcn_granule=process counts processes instead)") from None
    raise
  ici_shape = mesh_shape(dict(sizes), len(devices) // num_granules, key="config.mesh.axes",
                         unit="devices" if num_granules == 1 else
                         f"devices per {dcn_granule} ({num_granules} {unit})")
  # Splitting a physical torus axis between two mesh axes costs bandwidth, but refusing shapes
  # like fsdp=8 x tensor=2 on a 4x4 slice helps no one: mesh_utils still picks an unsplit
  # assignment whenever one exists.
  if num_granules > 1:
    return mesh_utils.create_hybrid_device_mesh(
        ici_shape, dcn_shape, devices, process_is_granule=dcn_granule == "process",
        allow_split_physical_axes=True)
  try:
    return mesh_utils.create_device_mesh(ici_shape, devices, allow_split_physical_axes=True)
  except (AssertionError, NotImplementedError) as error:
    # A hand-picked subset of a TPU slice (e.g. one device for a restore) need not be a
    # contiguous block of the torus; its order is then as good as any.
    logging.warning("mesh: no topology-aware layout for these %d devices (%s); using their "
                    "order", len(devices), error)
    return np.asarray(devices, dtype=object).reshape(ici_shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None, *,
              dcn_sizes: dict[str, int] | None = None, dcn_granule: str = "slice") -> Mesh:
  """A topology-aware mesh over `devices` (default: all) with Auto axes.

  See `device_grid` for `sizes`, `dcn_sizes` and `dcn_granule`. The axes are Auto, not the
  Explicit that `jax.make_mesh` defaults to, because the model's logical constraints and the
  config's rules rely on the compiler propagating shardings.
  """
  grid = device_grid(sizes, jax.devices() if devices is None else devices,
                     dcn_sizes=dcn_sizes, dcn_granule=dcn_granule)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_from_config(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of `config.mesh`: `axes` (per slice), `dcn_axes` and `dcn_granule`.

  A mesh config without the DCN fields (one built by hand) gets their defaults: every slice
  on `data`, slices found from the devices.
  """
  dcn_sizes = mesh_config.get("dcn_axes", None)
  return make_mesh(dict(mesh_config.axes), devices,
                   dcn_sizes=None if dcn_sizes is None else dict(dcn_sizes),
                   dcn_granule=mesh_config.get("dcn_granule", "slice"))


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
