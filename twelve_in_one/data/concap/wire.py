"""The byte format of one Conceptual Captions LMDB value: msgpack with msgpack_numpy arrays.

The official loader reads the corpus with tensorpack 0.9.4's `LMDBSerializer.load`, whose
values were written by `msgpack.dumps(datapoint, use_bin_type=True)` after
`msgpack_numpy.patch()`, and are read back by

    msgpack.loads(value, raw=False, max_bin_len=MAX_MSGPACK_LEN, max_array_len=MAX_MSGPACK_LEN,
                  max_map_len=MAX_MSGPACK_LEN, max_str_len=MAX_MSGPACK_LEN)

(the same call as the official `deserialize_lmdb`). msgpack_numpy turns each numpy array into
a msgpack map with binary keys,

    {b"nd": True, b"type": dtype.str, b"kind": b"", b"shape": [...], b"data": <raw bytes>}

and each numpy scalar into `{b"nd": False, b"type": dtype.str, b"data": <raw bytes>}`; Python
ints, floats and strings stay native msgpack values. This module writes and reads exactly that,
without depending on msgpack_numpy (its encoding is the few lines below). `tests/data/
test_concap.py` checks the bytes against msgpack_numpy's own `packb` / `unpackb`.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

# The limit tensorpack and the official `deserialize_lmdb` pass for every msgpack length.
MAX_MSGPACK_LEN = 1_000_000_000
UNPACK_OPTIONS: dict[str, Any] = {
    "raw": False, "max_bin_len": MAX_MSGPACK_LEN, "max_array_len": MAX_MSGPACK_LEN,
    "max_map_len": MAX_MSGPACK_LEN, "max_str_len": MAX_MSGPACK_LEN}

_ARRAY_KEYS = (b"nd", b"type", b"kind", b"shape", b"data")


class WireFormatError(ValueError):
  """A value that is not msgpack, or an array map that msgpack_numpy would not decode."""


def encode_numpy(value: Any) -> Any:
  """msgpack `default` hook: a numpy array or scalar -> msgpack_numpy's map.

  Raises:
    TypeError: any other type msgpack cannot pack, or a structured/object array (the
      corpus holds only plain numeric arrays).
  """
  if isinstance(value, np.ndarray):
    if value.dtype.kind in "VO":
      raise TypeError(f"cannot write a numpy array of dtype {value.dtype} (structured or "
                      "object); expected a numeric array")
    return {b"nd": True, b"type": value.dtype.str, b"kind": b"", b"shape": value.shape,
            b"data": value.tobytes()}
  if isinstance(value, (np.bool_, np.number)):
    return {b"nd": False, b"type": value.dtype.str, b"data": value.tobytes()}
  raise TypeError(f"cannot write a value of type {type(value).__name__}")


def decode_numpy(value: dict[Any, Any]) -> Any:
  """msgpack `object_hook`: msgpack_numpy's array or scalar map -> numpy; other maps as is.

  Arrays are read-only views of the value's bytes, as msgpack_numpy returns them.

  Raises:
    WireFormatError: a map marked `b"nd"` that lacks a field, or whose dtype, shape and byte
      count disagree.
  """
  if b"nd" not in value:
    return value
  try:
    dtype = np.dtype(value[b"type"])
    data = value[b"data"]
    if dtype.kind in "VO" or not isinstance(data, bytes):
      raise WireFormatError(f"array map of dtype {dtype} with {type(data).__name__} data; "
                            "expected a numeric dtype and binary data")
    if value[b"nd"] is not True:
      if len(data) != dtype.itemsize:
        raise WireFormatError(f"scalar map of dtype {dtype} holds {len(data)} bytes, not "
                              f"{dtype.itemsize}")
      return np.frombuffer(data, dtype)[0]
    shape = tuple(int(dim) for dim in value[b"shape"])
  except KeyError as error:
    raise WireFormatError(f"numpy map lacks the field {error.args[0]!r}; msgpack_numpy "
                          f"writes {list(_ARRAY_KEYS)}") from None
  except TypeError as error:
    raise WireFormatError(f"numpy map with an unreadable dtype or shape ({error})") from None
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if any(dim < 0 for dim in shape) or len(data) != expected:
    raise WireFormatError(f"array map of shape {list(shape)} and dtype {dtype} holds "
                          f"{len(data)} bytes, not {expected}")
  return np.frombuffer(data, dtype).reshape(shape)


def dumps(value: Any) -> bytes:
  """Serialize as tensorpack 0.9.4 does with msgpack_numpy patched in (`use_bin_type=True`)."""
  return msgpack.packb(value, use_bin_type=True, default=encode_numpy)


def loads(data: bytes) -> Any:
  """Deserialize with the official loader's options, decoding msgpack_numpy's maps.

  Raises:
    WireFormatError: not a single msgpack value, or a malformed numpy map.
  """
  try:
    return msgpack.unpackb(data, object_hook=decode_numpy, **UNPACK_OPTIONS)
  except WireFormatError:
    raise
  except (ValueError, msgpack.UnpackException) as error:
    # msgpack reports truncated data, extra bytes and invalid UTF-8 as ValueError subclasses.
    raise WireFormatError(f"not a msgpack value ({type(error).__name__}: {error})") from None
