"""The device mesh: shapes and axis order from the config, Auto axes, the multi-slice layout.

Runs on the 8 fake CPU devices of conftest.py. Fake CPU devices have no slice index (and no
TPU coordinates), so the multi-slice and torus layouts are checked on stand-ins that carry
those attributes and wrap a real device each.
"""

import dataclasses
import importlib.util
import itertools
import pathlib

import jax
import numpy as np
import pytest
from absl import flags
from jax.sharding import AxisType, Mesh
from ml_collections import config_flags

from twelve_in_one.train import sharding

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "configs" / "twelve_in_one.py"


def _config(arg: str = "tiny"):
  spec = importlib.util.spec_from_file_location("twelve_in_one_config_for_mesh", CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@dataclasses.dataclass(frozen=True)
class StandIn:
  """A device as mesh_utils sees it, with the attributes fake CPU devices lack."""
  device: jax.Device
  slice_index: int = 0
  process_index: int = 0
  platform: str = "cpu"
  device_kind: str = "cpu"
  coords: tuple[int, int, int] = (0, 0, 0)
  core_on_chip: int = 0

  @property
  def id(self) -> int:
    return self.device.id


def _unwrap(grid: np.ndarray) -> np.ndarray:
  return np.vectorize(lambda d: d.device, otypes=[object])(grid)


def _attr(grid: np.ndarray, name: str) -> np.ndarray:
  return np.vectorize(lambda d: getattr(d, name))(grid)


def _two_slices(**kwargs) -> list[StandIn]:
  # Interleaved, so that grouping by slice is not just the enumeration order.
  return [StandIn(d, slice_index=i % 2, **kwargs) for i, d in enumerate(jax.devices())]


# ------------------------------------------------------------------ one slice


@pytest.mark.parametrize("preset,shape", [("dp", (8, 1, 1)), ("fsdp", (1, 8, 1)),
                                          ("fsdp_tp", (1, 4, 2)), ("dp_tp", (4, 1, 2))])
def test_each_preset_gives_its_shape_with_auto_axes(preset, shape):
  assert len(jax.devices()) == 8
  mesh = sharding.mesh_from_config(_config(f"tiny,mesh={preset}").mesh)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.devices.shape) == shape
  assert mesh.axis_types == (AxisType.Auto,) * 3
  # On CPU there is no topology to follow: the devices keep their order.
  assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]


@pytest.mark.parametrize("axes,shape", [({"data": 2, "fsdp": -1, "tensor": 2}, (2, 2, 2)),
                                        ({"data": 2, "fsdp": 4, "tensor": 1}, (2, 4, 1)),
                                        ({"data": 1, "fsdp": 1, "tensor": -1}, (1, 1, 8))])
def test_overridden_axes_give_their_shape(axes, shape):
  config = _config("tiny")
  config.mesh.axes = axes
  mesh = sharding.mesh_from_config(config.mesh)
  assert dict(mesh.shape) == dict(zip(("data", "fsdp", "tensor"), shape))


def test_command_line_overrides_reach_the_mesh():
  argv = ["prog", f"--config={CONFIG_FILE}:tiny,mesh=fsdp", "--config.mesh.axes.tensor=2",
          "--config.mesh.dcn_axes.data=1", "--config.mesh.dcn_axes.fsdp=-1"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv, lock_config=True)
  fv(argv)
  assert dict(fv.config.mesh.dcn_axes) == {"data": 1, "fsdp": -1, "tensor": 1}
  assert dict(sharding.mesh_from_config(fv.config.mesh).shape) == {
      "data": 1, "fsdp": 4, "tensor": 2}


def test_a_mesh_config_without_dcn_fields_still_works():
  assert dict(sharding.make_mesh({"fsdp": -1}).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  one = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  assert one.devices.shape == (1, 1, 1)


def test_tpu_torus_axes_map_to_physical_neighbours():
  # A 4x2x1 torus of chips, enumerated in a scrambled order; `tensor` (the most
  # communication-heavy axis) must pair chips one hop apart, `fsdp` must run along a ring.
  coords = [(x, y, 0) for x in range(4) for y in range(2)]
  order = np.random.default_rng(0).permutation(8)
  devices = [StandIn(jax.devices()[i], platform="tpu", device_kind="TPU v4",
                     coords=coords[int(order[i])]) for i in range(8)]
  grid = sharding.device_grid({"data": 1, "fsdp": -1, "tensor": 2}, devices)
  assert grid.shape == (1, 4, 2)
  for f in range(4):
    (x0, y0, _), (x1, y1, _) = grid[0, f, 0].coords, grid[0, f, 1].coords
    assert x0 == x1 and abs(y0 - y1) == 1
  assert sorted(d.coords[0] for d in grid[0, :, 0]) == [0, 1, 2, 3]
  assert sharding.Mesh(_unwrap(grid), sharding.MESH_AXES).devices.shape == (1, 4, 2)


# ------------------------------------------------------------------ several slices


@pytest.mark.parametrize("axes,shape", [({"data": 1, "fsdp": -1, "tensor": 1}, (2, 4, 1)),
                                        ({"data": 1, "fsdp": -1, "tensor": 2}, (2, 2, 2)),
                                        ({"data": -1, "fsdp": 1, "tensor": 1}, (8, 1, 1))])
def test_two_slices_put_data_across_them_by_default(axes, shape):
  config = _config("tiny")
  grid = sharding.device_grid(axes, _two_slices(), dcn_sizes=dict(config.mesh.dcn_axes))
  assert grid.shape == shape
  slices = _attr(grid, "slice_index")
  half = shape[0] // 2
  # Everything off the DCN axis (fsdp x tensor, and data's in-slice part) is one slice.
  assert (slices[:half] == 0).all() and (slices[half:] == 1).all()
  mesh = Mesh(_unwrap(grid), sharding.MESH_AXES,
              axis_types=(AxisType.Auto,) * len(sharding.MESH_AXES))
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_fsdp_across_slices_keeps_each_half_of_the_axis_in_one_slice():
  grid = sharding.device_grid({"data": 1, "fsdp": -1, "tensor": 1}, _two_slices(),
                              dcn_sizes={"data": 1, "fsdp": -1, "tensor": 1})
  assert grid.shape == (1, 8, 1)
  assert list(_attr(grid, "slice_index")[0, :, 0]) == [0] * 4 + [1] * 4


def test_processes_can_stand_for_slices():
  devices = [StandIn(d, process_index=i // 4) for i, d in enumerate(jax.devices())]
  grid = sharding.device_grid({"fsdp": -1}, devices, dcn_granule="process")
  assert grid.shape == (2, 4, 1)
  assert (_attr(grid, "process_index") == np.arange(2)[:, None, None]).all()
  # Counted as slices, the same devices (no slice index) are one slice.
  assert sharding.device_grid({"fsdp": -1}, devices).shape == (1, 8, 1)


def test_tpu_slices_follow_each_slice_torus():
  coords = [(x, y, 0) for x in range(2) for y in range(2)]
  devices = [StandIn(d, slice_index=i // 4, platform="tpu", device_kind="TPU v4",
                     coords=coords[i % 4]) for i, d in enumerate(jax.devices())]
  grid = sharding.device_grid({"data": 1, "fsdp": 2, "tensor": 2}, devices)
  assert grid.shape == (2, 2, 2)
  for s, f in itertools.product(range(2), range(2)):
    pair = grid[s, f]
    assert {d.slice_index for d in pair} == {s}
    assert sum(a != b for a, b in zip(pair[0].coords, pair[1].coords)) == 1


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("axes,dcn,devices,message", [
    ({"data": -1, "fsdp": -1}, None, None,
     "config.mesh.axes.data=-1 and config.mesh.axes.fsdp=-1: at most one mesh axis may be -1"),
    ({"data": 3, "fsdp": 1, "tensor": 1}, None, None,
     "config.mesh.axes: data=3 x fsdp=1 x tensor=1 multiply to 3, but there are 8 devices"),
    ({"fsdp": -1, "tensor": 3}, None, None,
     "config.mesh.axes.fsdp=-1: 8 devices are not divisible by 3, the product of the other "
     "axes"),
    ({"fsdp": -1, "model": 2}, None, None,
     "config.mesh.axes.model: unknown mesh axis; expected one of data, fsdp, tensor"),
    ({"fsdp": 0}, None, None,
     "config.mesh.axes.fsdp=0: a mesh axis size must be a positive integer or -1"),
    ({"fsdp": -1}, {"data": 4}, "two_slices",
     "config.mesh.dcn_axes: data=4 x fsdp=1 x tensor=1 multiply to 4, but there are 2 slices"),
    ({"fsdp": -1}, {"data": -1, "tensor": -1}, "two_slices",
     "config.mesh.dcn_axes.data=-1 and config.mesh.dcn_axes.tensor=-1: at most one"),
    ({"fsdp": 8}, None, "two_slices",
     "config.mesh.axes: data=1 x fsdp=8 x tensor=1 multiply to 8, but there are 4 devices per "
     "slice (2 slices)"),
    ({"fsdp": -1}, {"data": 2}, None,
     "config.mesh.dcn_axes: data=2 x fsdp=1 x tensor=1 multiply to 2, but there are 1 slices "
     "(these devices have no slice index; config.mesh.dcn_granule=process counts processes"),
])
def test_bad_shapes_are_one_line_errors_naming_the_key(axes, dcn, devices, message):
  devices = _two_slices() if devices == "two_slices" else jax.devices()
  with pytest.raises(ValueError) as error:
    sharding.device_grid(axes, devices, dcn_sizes=dcn)
  assert message in str(error.value)
  assert "\n" not in str(error.value)


def test_unequal_slices_and_unknown_granules_are_errors():
  devices = [StandIn(d, slice_index=int(i >= 5)) for i, d in enumerate(jax.devices())]
  with pytest.raises(ValueError, match=r"the 2 slices hold unequal numbers of devices \[3, 5\]"):
    sharding.device_grid({"fsdp": -1}, devices)
  with pytest.raises(ValueError, match="config.mesh.dcn_granule='host': expected one of slice, "
                                       "process"):
    sharding.device_grid({"fsdp": -1}, jax.devices(), dcn_granule="host")


def test_config_errors_surface_from_mesh_from_config():
  config = _config("tiny")
  config.mesh.dcn_axes.data = 1
  config.mesh.dcn_axes.fsdp = 2
  with pytest.raises(ValueError, match="config.mesh.dcn_axes: data=1 x fsdp=2"):
    sharding.mesh_from_config(config.mesh)
