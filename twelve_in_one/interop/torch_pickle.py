"""Reading `torch.save` files (a state dict of tensors) with the standard library and numpy.

Training on a Cloud TPU VM installs no torch, yet the official checkpoints are `torch.save`
files. Both of torch's layouts are read here:

* the zip layout (torch.save's default since torch 1.6): `<prefix>/data.pkl` is the pickle,
  `<prefix>/data/<key>` holds each storage's raw bytes, `<prefix>/byteorder` their byte order;
* the legacy layout (`_use_new_zipfile_serialization=False`): a magic number, a protocol
  version and a sys-info dict (three small pickles), the main pickle, the sorted list of
  storage keys (a pickle), then each storage as an int64 element count and its raw bytes.

The unpickler resolves only the globals a state dict needs (an OrderedDict and torch's tensor
rebuild functions and storage types); any other global is refused before anything is built,
so a downloaded file never runs code. Tensors come back as numpy arrays (bfloat16 widened to
float32, which holds every bfloat16 value exactly, since numpy has no bfloat16).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Iterator

import numpy as np
from etils import epath

# torch.serialization's markers for the legacy layout.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"
_BFLOAT16 = "bfloat16"  # stored as raw uint16 words, widened after reading

# torch's typed storage classes (pickled as `torch.<Name>Storage`) -> element type.
_STORAGE_DTYPES: dict[str, Any] = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": _BFLOAT16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
}


class TorchPickleError(ValueError):
  """The file cannot be read as a state dict; the message is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str
  dtype: Any  # a numpy scalar type, or _BFLOAT16

  @property
  def itemsize(self) -> int:
    return 2 if self.dtype == _BFLOAT16 else np.dtype(self.dtype).itemsize


@dataclasses.dataclass
class _Storage:
  """A storage named in the pickle; its bytes are read only after the pickle is done."""
  key: str
  type: _StorageType
  numel: int
  offset: int = 0  # elements; non-zero only for the legacy layout's storage views
  tensors: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _TensorRef:
  """A tensor as pickled: a strided view into a storage, made an array after the pickle."""
  storage: _Storage
  offset: int
  size: tuple
  stride: tuple
  array: np.ndarray | None = None


class _Unpickler(pickle.Unpickler):
  """Resolves only state-dict globals; storages and tensors become placeholders."""

  def __init__(self, file: BinaryIO, source: str):
    super().__init__(file)
    self.source = source
    self.storages: dict[tuple[str, str, int], _Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name in _REBUILDERS:
      return _REBUILDERS[name]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name, _STORAGE_DTYPES[name])
    raise TorchPickleError(f"{self.source}: refuses to unpickle {module}.{name}; only a state "
                           "dict of tensors is read")

  def persistent_load(self, pid: Any) -> _Storage:
    # zip layout: ("storage", type, key, location, numel); legacy adds a view description.
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise TorchPickleError(f"{self.source}: unexpected persistent id {str(pid)[:100]}; not a "
                             "state dict of tensors")
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    offset = 0
    if len(pid) == 6 and pid[5] is not None:  # very old torch: (view key, offset, size)
      offset = int(pid[5][1])
    # Tied weights name the same key, so they gather on one _Storage. The type is part of the
    # identity only because a key reinterpreted as another dtype must be decoded again.
    ident = (key, storage_type.name, offset)
    if ident not in self.storages:
      self.storages[ident] = _Storage(key, storage_type, numel, offset)
    return self.storages[ident]


def _rebuild_tensor(storage: _Storage, storage_offset: int, size: tuple, stride: tuple,
                    *unused: Any, **unused_kw: Any) -> _TensorRef:
  # requires_grad, backward hooks and metadata do not matter to a state dict's values.
  if not isinstance(storage, _Storage):
    raise TypeError(f"a tensor rebuilt from a {type(storage).__name__}, not a storage")
  ref = _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                   tuple(int(s) for s in stride))
  storage.tensors.append(ref)
  return ref


def _rebuild_parameter(data: _TensorRef, *unused: Any) -> _TensorRef:
  return data


_REBUILDERS = {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor,
               "_rebuild_parameter": _rebuild_parameter,
               "_rebuild_parameter_with_state": _rebuild_parameter}


def _decode(raw: bytearray, storage_type: _StorageType, little_endian: bool) -> np.ndarray:
  """The storage's elements as a flat array (a writable view of `raw` where possible)."""
  count = len(raw) // storage_type.itemsize
  raw = memoryview(raw)[:count * storage_type.itemsize]
  order = "<" if little_endian else ">"
  if storage_type.dtype == _BFLOAT16:
    words = np.frombuffer(raw, np.dtype(order + "u2"))
    # bfloat16 is the top half of a float32: shifting the word up is exact.
    return (words.astype(np.uint32) << 16).view(np.float32)
  dtype = np.dtype(storage_type.dtype)
  array = np.frombuffer(raw, dtype.newbyteorder(order))
  return array if array.dtype.isnative else array.astype(dtype)


def _materialize(storage: _Storage, raw: bytearray, little_endian: bool, source: str,
                 exclusive: bool) -> None:
  """Fills every tensor of `storage` from its bytes (`exclusive`: no other _Storage reads
  `raw`, so an array may be a view of it)."""
  flat = _decode(raw, storage.type, little_endian)
  whole = exclusive and len(storage.tensors) == 1 and storage.offset == 0
  for ref in storage.tensors:
    count = int(np.prod(ref.size, dtype=np.int64))
    if count == 0:
      ref.array = np.zeros(ref.size, flat.dtype)
      continue
    start = storage.offset + ref.offset
    last = start + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if len(ref.size) != len(ref.stride) or start < 0 or min(ref.stride, default=0) < 0 or (
        last >= flat.size):
      raise TorchPickleError(
          f"{source}: tensor of shape {ref.size} (stride {ref.stride}, offset {start}) lies "
          f"outside its storage {storage.key!r} of {flat.size} elements; the file is corrupt")
    if whole and start == 0 and count == flat.size and _is_contiguous(ref.size, ref.stride):
      # The only tensor on this storage, covering it in order: no copy needed.
      ref.array = flat.reshape(ref.size)
    else:
      # A view (a transpose, a slice, a tied alias): its own contiguous copy, so that arrays
      # never alias each other and writing one never changes another.
      ref.array = np.lib.stride_tricks.as_strided(
          flat[start:], shape=ref.size, strides=[s * flat.itemsize for s in ref.stride],
          writeable=False).copy()


def _is_contiguous(size: tuple, stride: tuple) -> bool:
  expected = 1
  for n, s in zip(reversed(size), reversed(stride)):
    if n != 1 and s != expected:
      return False
    expected *= n
  return True


def _read_exact(file: BinaryIO, count: int) -> bytearray:
  """`count` bytes, or EOFError: remote files may return short reads."""
  buffer = bytearray(count)
  view, done = memoryview(buffer), 0
  while done < count:
    got = file.readinto(view[done:])
    if not got:
      raise EOFError(f"ran out of data: {done} of {count} bytes of a storage")
    done += got
  return buffer


def _resolve(obj: Any, source: str, seen: set[int] | None = None) -> Any:
  """`obj` with every tensor placeholder replaced by its array (dicts and lists in place, so
  an OrderedDict keeps its order and attributes such as a state dict's `_metadata`)."""
  seen = set() if seen is None else seen
  if isinstance(obj, _TensorRef):
    # A tensor saved under two names (tied weights) is one pickled object; the second name
    # gets a copy so that no two arrays alias.
    if id(obj) in seen:
      return obj.array.copy()
    seen.add(id(obj))
    return obj.array
  if isinstance(obj, dict):
    for k, v in obj.items():
      obj[k] = _resolve(v, source, seen)
  elif isinstance(obj, list):
    obj[:] = [_resolve(v, source, seen) for v in obj]
  elif isinstance(obj, tuple):
    return tuple(_resolve(v, source, seen) for v in obj)
  elif isinstance(obj, (_Storage, _StorageType)):
    raise TorchPickleError(f"{source}: holds a bare storage, not a tensor; only a state dict "
                           "of tensors is read")
  return obj


def _load_zip(file: BinaryIO, source: str) -> Any:
  with zipfile.ZipFile(file) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise TorchPickleError(f"{source}: a zip archive without exactly one data.pkl "
                             f"({len(pickles)} found); not a torch.save file")
    prefix = pickles[0][:-len("data.pkl")]
    # Files written before torch recorded a byte order are little-endian.
    little_endian = True
    if prefix + "byteorder" in names:
      little_endian = archive.read(prefix + "byteorder").strip() != b"big"
    unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])), source)
    obj = unpickler.load()
    for storage in unpickler.storages.values():
      entry = archive.getinfo(f"{prefix}data/{storage.key}")
      with archive.open(entry) as data:
        raw = _read_exact(data, entry.file_size)
      _materialize(storage, raw, little_endian, source, exclusive=True)
  return _resolve(obj, source)


def _load_legacy(file: BinaryIO, source: str) -> Any:
  # The three headers hold no globals; the restricted unpickler reads them safely.
  magic = _Unpickler(file, source).load()
  if magic != _LEGACY_MAGIC:
    raise TorchPickleError(f"{source}: neither a zip archive nor a legacy torch.save file "
                           "(wrong magic number)")
  protocol = _Unpickler(file, source).load()
  if protocol != _LEGACY_PROTOCOL:
    raise TorchPickleError(f"{source}: legacy torch.save protocol {protocol!r} is not "
                           f"{_LEGACY_PROTOCOL}")
  sys_info = _Unpickler(file, source).load()
  little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else (
      True)
  unpickler = _Unpickler(file, source)
  obj = unpickler.load()
  keys = _Unpickler(file, source).load()
  by_key: dict[str, list[_Storage]] = collections.defaultdict(list)
  for storage in unpickler.storages.values():
    by_key[storage.key].append(storage)
  count_format = "<q" if little_endian else ">q"
  # The storages follow in the order of `keys`, each read and turned into arrays in turn, so
  # only one raw storage is held in memory at a time.
  for key in keys:
    views = by_key.get(str(key))
    if not views:
      raise TorchPickleError(f"{source}: storage {key!r} is not used by any tensor; the file "
                             "is corrupt")
    (count,) = struct.unpack(count_format, _read_exact(file, 8))
    root = views[0]
    # Checked before allocating: a damaged count must not ask for terabytes.
    if root.offset == 0 and count != root.numel:
      raise TorchPickleError(f"{source}: storage {key!r} holds {count} elements, but its "
                             f"tensors expect {root.numel}; the file is corrupt")
    raw = _read_exact(file, count * root.type.itemsize)
    for storage in views:
      _materialize(storage, raw, little_endian, source, exclusive=len(views) == 1)
  return _resolve(obj, source)


@contextlib.contextmanager
def _open_seekable(path: epath.Path) -> Iterator[BinaryIO]:
  with path.open("rb") as file:
    seekable = getattr(file, "seekable", lambda: False)()
    # zipfile seeks to the central directory; a stream that cannot seek is read into memory.
    yield file if seekable else io.BytesIO(file.read())


def load(path: str | os.PathLike) -> Any:
  """Unpickles a `torch.save` file of tensors, local or remote (any `etils.epath` path).

  Args:
    path: a `torch.save` file, in the zip or the legacy layout.

  Returns:
    The saved object with every tensor as a numpy array: for `torch.save(model.state_dict())`
    an OrderedDict name -> array, in the saved order. Each array has its own memory, also for
    tensors that shared a storage (tied weights). bfloat16 tensors come back as float32.

  Raises:
    FileNotFoundError: the file does not exist.
    TorchPickleError: a global other than the state-dict ones, or a truncated, corrupt or
      non-torch file; a one-line message naming the file.
  """
  source = os.fspath(path)
  with _open_seekable(epath.Path(source)) as file:
    try:
      head = file.read(4)
      file.seek(0)
      if head.startswith(_ZIP_MAGIC):
        return _load_zip(file, source)
      return _load_legacy(file, source)
    except TorchPickleError:
      raise
    except Exception as e:  # EOFError, BadZipFile, UnpicklingError, struct.error, KeyError...
      raise TorchPickleError(f"{source}: cannot read it as a PyTorch state dict; the file is "
                             f"truncated, corrupt or not a torch.save file "
                             f"({type(e).__name__}: {_first_line(e)})") from None


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0][:300] if text else "no message"
