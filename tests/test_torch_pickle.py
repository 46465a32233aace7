"""Reading torch.save files without torch (`interop.torch_pickle`), checked against torch.load.

torch writes the files and is the reference here; the reader itself never imports it (the
last test runs it with `import torch` blocked).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from twelve_in_one.interop import torch_pickle
from twelve_in_one.interop.checkpoint_io import CheckpointError, read_state_dict

torch = pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}


def reference(tensor) -> np.ndarray:
  """What the reader must return for `tensor`: its values, bfloat16 widened to float32."""
  tensor = tensor.detach()
  return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
  assert isinstance(actual, np.ndarray), name
  assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), name
  # tobytes() compares NaN payloads and signed zeros too, in C order for any strides.
  assert actual.tobytes() == expected.tobytes(), name


def example_state_dict() -> "collections.OrderedDict[str, object]":
  """Every dtype a checkpoint uses, views into shared storages, 0-d and empty tensors."""
  gen = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=gen)
  special = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0, 1e-40, 3.14159])
  return collections.OrderedDict([
      ("base", base),
      ("tied", base),                                  # a second name for the same tensor
      ("transposed", base.t()),                        # same storage, swapped strides
      ("slice", base[1:3, 2:5]),                       # storage offset and a row stride of 6
      ("float16", torch.randn(5, 3, generator=gen).half()),
      ("bfloat16", torch.cat([torch.randn(7, generator=gen), special]).bfloat16()),
      ("bfloat16_view", torch.randn(3, 4, generator=gen).bfloat16()[:, 1::2]),
      ("float64", torch.randn(2, 2, generator=gen, dtype=torch.float64)),
      ("int64", torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4)),
      ("int32", torch.tensor([2**31 - 1, -2**31, 0], dtype=torch.int32)),
      ("uint8", torch.arange(250, 256, dtype=torch.uint8)),
      ("bool", torch.tensor([[True, False], [False, True]])),
      ("scalar", torch.tensor(2.5)),                   # 0-d
      ("scalar_int", torch.tensor(-7)),
      ("element", base[2, 3]),                         # 0-d view at an offset
      ("empty", torch.zeros(0, 3)),
      ("parameter", torch.nn.Parameter(torch.ones(2, 2))),
  ])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_both_layouts_match_torch_load_bitwise(tmp_path, layout):
  state = example_state_dict()
  path = tmp_path / "model.bin"
  torch.save(state, path, **LAYOUTS[layout])
  expected = torch.load(path, weights_only=True)
  loaded = torch_pickle.load(path)
  assert list(loaded) == list(expected) == list(state)
  for name, tensor in expected.items():
    assert_bitwise_equal(loaded[name], reference(tensor), name)
  # Arrays never alias each other, even where the tensors shared one storage.
  assert not np.shares_memory(loaded["base"], loaded["tied"])
  assert not np.shares_memory(loaded["base"], loaded["transposed"])
  loaded["base"][0, 0] = 42.0
  assert loaded["tied"][0, 0] != 42.0
  # The checkpoint_io entry point gives the same arrays.
  back = read_state_dict(path)
  assert list(back) == list(state)
  for name, tensor in expected.items():
    assert_bitwise_equal(back[name], reference(tensor), name)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_a_wrapped_state_dict_is_unwrapped(tmp_path, wrapper):
  state = collections.OrderedDict(w=torch.arange(6.0).reshape(2, 3), b=torch.ones(3))
  path = tmp_path / "trainer.pth"
  torch.save({wrapper: state, "epoch": 3}, path)
  back = read_state_dict(path)
  assert list(back) == ["w", "b"]
  for name, tensor in state.items():
    assert_bitwise_equal(back[name], reference(tensor), name)


def test_the_official_fixture_matches_torch_and_npz(fixture_dir):
  path = fixture_dir / "tiny_state_dict.bin"
  expected = torch.load(path, weights_only=True)
  npz = np.load(fixture_dir / "tiny_state_dict.npz")
  loaded = read_state_dict(path)
  assert list(loaded) == list(expected) and sorted(loaded) == sorted(npz.files)
  assert len(loaded) == 256
  for name, tensor in expected.items():
    assert_bitwise_equal(loaded[name], reference(tensor), name)
    assert_bitwise_equal(loaded[name], npz[name], name)


class _Stream(io.RawIOBase):
  """A read-only stream that cannot seek, as some remote file systems give."""

  def __init__(self, data: bytes):
    self.data, self.position = data, 0

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    chunk = self.data[self.position:self.position + min(len(buffer), 1000)]  # short reads
    buffer[:len(chunk)] = chunk
    self.position += len(chunk)
    return len(chunk)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_stream_that_cannot_seek(tmp_path, monkeypatch, layout):
  state = example_state_dict()
  path = tmp_path / "remote.bin"
  torch.save(state, path, **LAYOUTS[layout])
  data = path.read_bytes()

  class StreamPath:  # stands in for an epath.Path of a remote file
    def __init__(self, name):
      assert name == str(path)

    def open(self, mode):
      assert mode == "rb"
      return _Stream(data)

  monkeypatch.setattr(torch_pickle.epath, "Path", StreamPath)
  loaded = torch_pickle.load(str(path))
  for name, tensor in state.items():
    assert_bitwise_equal(loaded[name], reference(tensor), name)


# --------------------------------------------------------------------------- refusals
def assert_one_line_error(path, pattern: str) -> None:
  with pytest.raises(CheckpointError, match=pattern) as error:
    read_state_dict(path)
  message = str(error.value)
  assert message.startswith(f"{path}: ") and "\n" not in message, message


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_truncated_files_are_one_line_errors(tmp_path, layout):
  path = tmp_path / "model.bin"
  torch.save(collections.OrderedDict(a=torch.arange(5000.0), b=torch.ones(30, 40)), path,
             **LAYOUTS[layout])
  data = path.read_bytes()
  for cut in (len(data) - 1, len(data) // 2, 100, 7, 0):
    path.write_bytes(data[:cut])
    assert_one_line_error(path, r"cannot read it as a PyTorch state dict; the file is truncated")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_pickled_module_is_refused(tmp_path, layout):
  path = tmp_path / "pytorch_model.bin"
  torch.save(torch.nn.Linear(2, 2), path, **LAYOUTS[layout])
  assert_one_line_error(path, r"pytorch_model.bin: refuses to unpickle "
                              r"torch\.nn\.modules\.linear\.Linear; only a state dict of "
                              r"tensors is read$")


class _RunsCommand:
  """A pickle that would run a shell command when loaded by an unrestricted unpickler."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_a_code_running_global_is_never_called(tmp_path):
  path = tmp_path / "evil.bin"
  marker = tmp_path / "ran"
  with open(path, "wb") as f:  # the legacy layout's three headers, then the payload
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    pickle.dump({"w": _RunsCommand(str(marker))}, f, protocol=2)
  assert_one_line_error(path, rf"refuses to unpickle {os.system.__module__}\.system; only a "
                              r"state dict of tensors is read")
  assert not marker.exists()


def test_non_tensor_entries_and_missing_files(tmp_path):
  path = tmp_path / "mixed.bin"
  torch.save(collections.OrderedDict(w=torch.ones(2), step=5), path)
  assert_one_line_error(path, r"entry 'step' is a int, not a tensor")
  with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
    read_state_dict(tmp_path / "absent.bin")
  (tmp_path / "folder.bin").mkdir()
  with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
    read_state_dict(tmp_path / "folder.bin")


# ------------------------------------------------------------------------ without torch
_NO_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
from twelve_in_one.interop.checkpoint_io import read_state_dict
for path in sys.argv[1:]:
  state = read_state_dict(path)
  np.savez(path + ".npz", **state)
assert sys.modules["torch"] is None
"""


def test_reading_needs_no_torch(tmp_path, fixture_dir):
  legacy = tmp_path / "legacy.bin"
  torch.save(example_state_dict(), legacy, **LAYOUTS["legacy"])
  official = tmp_path / "official.bin"
  official.write_bytes((fixture_dir / "tiny_state_dict.bin").read_bytes())
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _NO_TORCH, str(legacy), str(official)],
                          env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  for path in (legacy, official):
    expected = torch.load(path, weights_only=True)
    with np.load(f"{path}.npz") as got:
      assert got.files == list(expected)
      for name, tensor in expected.items():
        assert_bitwise_equal(got[name], reference(tensor), name)
