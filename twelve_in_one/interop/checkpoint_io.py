"""Checkpoint files: flat state dicts (torch `.bin`/`.pt`, `.npz`, `.safetensors`) and ours (orbax).

Flat state dicts (name -> array) are plain numpy here, with no model knowledge. The readers turn
every failure of the underlying library (a truncated zip, a bad pickle, a corrupt safetensors
header) into a `CheckpointError` that names the file and the format, because a user converting
a 1 GB download wants "this file is truncated", not a traceback from inside `zipfile` or `torch`.

Our own checkpoints are directories written by `save_params`: the parameter tree (orbax), the
full `ViLBertConfig` as JSON beside it, and free-form metadata such as a conversion report.

Every file and folder here may be local or on Cloud Storage (`gs://...`, through
`etils.epath`). A bucket has no rename, so a remote export is written in an order that readers
can trust instead: the parameters first, the metadata file last, and `load_params` refuses a
folder without it.

torch is optional: torch files are read without it (`torch_pickle`, so a TPU VM reads the
official checkpoints, also from gs://), and it is imported only to write the torch format, where
its absence is a clear error that points to the formats that need no torch.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping

import jax
import numpy as np
from etils import epath

from twelve_in_one import paths
from twelve_in_one.interop import torch_pickle
from twelve_in_one.models.config import ViLBertConfig

TORCH_SUFFIXES = (".bin", ".pt", ".pth")
NPZ_SUFFIXES = (".npz",)
SAFETENSORS_SUFFIXES = (".safetensors",)

class CheckpointError(ValueError):
  """A checkpoint file cannot be read or written; the message names the file and format."""


def checkpoint_format(path: str | os.PathLike) -> str:
  """"torch", "npz" or "safetensors", from the file name; CheckpointError otherwise."""
  name = os.fspath(path).lower()
  for fmt, suffixes in (("torch", TORCH_SUFFIXES), ("npz", NPZ_SUFFIXES),
                        ("safetensors", SAFETENSORS_SUFFIXES)):
    if name.endswith(suffixes):
      return fmt
  raise CheckpointError(
      f"{os.fspath(path)}: unknown checkpoint format; expected a file ending in one of "
      f"{list(TORCH_SUFFIXES + NPZ_SUFFIXES + SAFETENSORS_SUFFIXES)}")


def _import_torch(path: str, action: str):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointError(
        f"{path}: {action} a PyTorch checkpoint needs torch, which is not installed. Install "
        "torch (CPU is enough), or convert the state dict to .npz or .safetensors where torch "
        "is available, e.g. `np.savez(out, **{k: v.numpy() for k, v in sd.items()})`.") from None
  return torch


def _unwrap(obj, path: str, is_tensor: Callable[[object], bool]) -> Mapping:
  """A state dict, possibly saved by a trainer inside {"state_dict": ...} or {"model": ...}."""
  if not isinstance(obj, Mapping):
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict "
                          "(a mapping from parameter names to tensors)")
  if not any(is_tensor(v) for v in obj.values()):
    for wrapper in ("state_dict", "model"):
      if isinstance(obj.get(wrapper), Mapping):
        return obj[wrapper]
  return obj


def _read_torch(path: str) -> dict[str, np.ndarray]:
  # torch_pickle resolves only state-dict globals, so a downloaded file never runs code.
  try:
    obj = torch_pickle.load(path)
  except torch_pickle.TorchPickleError as e:  # its message already names the file
    raise CheckpointError(str(e)) from None
  state = _unwrap(obj, path, lambda v: isinstance(v, np.ndarray))
  for name, value in state.items():
    if not isinstance(value, np.ndarray):
      raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not a "
                            "tensor; expected a plain state dict (name -> tensor)")
  return collections.OrderedDict((str(k), v) for k, v in state.items())


def _read_npz(path: str) -> dict[str, np.ndarray]:
  # A remote archive is read through a seekable epath handle: zipfile reads the central
  # directory and then each member, so no second copy of the whole file is held in memory.
  with contextlib.ExitStack() as stack:
    source = stack.enter_context(epath.Path(path).open("rb")) if paths.is_remote(path) else path
    try:
      archive = np.load(source, allow_pickle=False)
    except Exception as e:  # BadZipFile, EOFError, ValueError from a bad header
      raise CheckpointError(f"{path}: cannot read it as an .npz archive; the file is truncated "
                            f"or corrupt ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise CheckpointError(f"{path}: holds a single .npy array, not an .npz archive of named "
                            "arrays")
    try:
      # An npz is read lazily: reading every member here is what detects a truncated archive
      # (a damaged member fails its CRC or decompression only when read).
      return collections.OrderedDict((name, archive[name]) for name in archive.files)
    except Exception as e:  # BadZipFile, zlib.error, EOFError, ValueError (object arrays)
      raise CheckpointError(f"{path}: cannot read it as an .npz archive; the file is truncated "
                            f"or corrupt ({type(e).__name__}: {_first_line(e)})") from None
    finally:
      archive.close()


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    from safetensors.numpy import load, load_file  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointError(f"{path}: reading .safetensors needs the `safetensors` package, "
                          "which is not installed") from None
  try:
    if paths.is_remote(path):
      # load_file memory-maps a local file; an object is read whole and parsed from bytes.
      return collections.OrderedDict(load(epath.Path(path).read_bytes()))
    return collections.OrderedDict(load_file(path))
  except Exception as e:  # SafetensorError (header/size), TypeError for bf16 in numpy...
    raise CheckpointError(f"{path}: cannot read it as a .safetensors file; the file is "
                          f"truncated, corrupt or holds a dtype numpy lacks "
                          f"({type(e).__name__}: {_first_line(e)})") from None


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0][:300] if text else "no message"


_READERS: dict[str, Callable[[str], dict[str, np.ndarray]]] = {
    "torch": _read_torch, "npz": _read_npz, "safetensors": _read_safetensors}


def read_state_dict(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
  """Reads a state dict (name -> numpy array) from a torch, .npz or .safetensors file.

  Every format is read from a local file or a `gs://` object. A torch file is read without
  torch (see `torch_pickle`); bfloat16 tensors come back as float32.

  Raises:
    FileNotFoundError: the file does not exist.
    CheckpointError: unknown suffix, a truncated / corrupt file, or a torch file holding
      anything other than tensors in (possibly nested) dicts and lists.
  """
  path = os.fspath(path)
  fmt = checkpoint_format(path)
  # epath, not os.path: an init checkpoint may live in a gs:// bucket.
  location = epath.Path(path)
  if not location.exists() or location.is_dir():
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  return _READERS[fmt](path)


# ------------------------------------------------------------------------------------ writing
def _umask_mode(base: int) -> int:
  """`base` under the process umask: what a plain open()/mkdir() would have given. mkstemp and
  mkdtemp create private (0600/0700) entries, which would make every export private."""
  umask = os.umask(0)
  os.umask(umask)
  return base & ~umask


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
  """Writes through a temporary file, so an interrupted export never leaves a complete-looking
  but truncated checkpoint. `write(local_path)` writes the whole file.

  Local: a temporary file in the same directory, renamed into place. Remote: a local temporary
  file, uploaded once complete (a bucket has no rename, but an object appears whole when its
  upload finishes, and the writers here need a local path anyway).
  """
  if paths.is_remote(path):
    with tempfile.TemporaryDirectory(prefix="twelve_in_one_export_") as scratch:
      local = os.path.join(scratch, os.path.basename(path))
      write(local)
      paths.copy_file(epath.Path(local), epath.Path(path))
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
  os.close(fd)
  try:
    write(tmp)
    os.chmod(tmp, _umask_mode(0o666))
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_npz(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray]) -> None:
  """Writes an uncompressed .npz keyed by the state-dict names."""
  path = os.fspath(path)
  arrays = {name: np.asarray(value) for name, value in state_dict.items()}

  def write(tmp: str) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
      np.savez(f, **arrays)

  _atomic_write(path, write)


def write_torch(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray],
                tied: Mapping[str, str] | None = None) -> None:
  """Writes a `torch.save` of an OrderedDict of tensors, loadable with `weights_only=True`.

  Args:
    path: destination file.
    state_dict: name -> array.
    tied: alias -> source name. The alias is stored as *the same tensor* as its source, as in
      a PyTorch state dict of a model with tied weights (the file then holds the data once).
  """
  path = os.fspath(path)
  torch = _import_torch(path, "writing")
  tied = dict(tied or {})
  tensors: collections.OrderedDict = collections.OrderedDict()
  for name, value in state_dict.items():
    if name in tied and tied[name] in tensors:
      tensors[name] = tensors[tied[name]]
    else:
      # copy: torch.from_numpy shares memory and rejects read-only / negative-stride arrays.
      tensors[name] = torch.from_numpy(np.array(value, copy=True))
  _atomic_write(path, lambda tmp: torch.save(tensors, tmp))


def write_safetensors(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray]) -> None:
  """Writes a .safetensors file (tied entries are stored as separate copies there)."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  arrays = {name: np.ascontiguousarray(value) for name, value in state_dict.items()}
  _atomic_write(path, lambda tmp: save_file(arrays, tmp))


def write_state_dict(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray],
                     tied: Mapping[str, str] | None = None) -> None:
  """Writes a state dict in the format its suffix names (see `checkpoint_format`)."""
  fmt = checkpoint_format(path)
  if fmt == "torch":
    write_torch(path, state_dict, tied)
  elif fmt == "npz":
    write_npz(path, state_dict)
  else:
    write_safetensors(path, state_dict)


# ------------------------------------------------------------------------ orbax checkpoints
PARAMS_DIR, CONFIG_FILE, META_FILE = "params", "config.json", "meta.json"
# meta.json's key naming the model whose parameters a checkpoint holds ("tasks" or
# "pretraining", as `interop.official` names them).
ARCHITECTURE_KEY = "architecture"
STORE_FORMAT = "twelve_in_one.params/1"


def config_to_json(config: ViLBertConfig) -> dict[str, Any]:
  """Every field of the dataclass (ours included), plus the official keys for reference."""
  fields = {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()}
  return {"format": STORE_FORMAT, "vilbert_config": fields,
          "official_config": config.to_official_dict()}


def config_from_json(values: Mapping[str, Any], source: str) -> ViLBertConfig:
  """The inverse of `config_to_json`; errors name `source` and any unknown field."""
  if values.get("format") != STORE_FORMAT or "vilbert_config" not in values:
    raise ValueError(f"{source}: not a twelve_in_one params config (format "
                     f"{values.get('format')!r}, expected {STORE_FORMAT!r})")
  known = {f.name for f in dataclasses.fields(ViLBertConfig)}
  unknown = sorted(set(values["vilbert_config"]) - known)
  if unknown:
    raise ValueError(f"{source}: unknown ViLBertConfig field(s) {unknown} (written by a newer "
                     "version?)")
  return ViLBertConfig(**values["vilbert_config"])


def save_params(path: str | os.PathLike, params: Mapping[str, Any], config: ViLBertConfig,
                meta: Mapping[str, Any] | None = None, *, overwrite: bool = False) -> str:
  """Writes `params` (orbax), `config.json` and `meta.json` into the directory `path`.

  Local: everything is written into a temporary sibling directory that is renamed to `path`
  only when complete. Remote (`gs://`, no rename): the parameters are written first and
  `meta.json` last, so an interrupted export has no `meta.json` and `load_params` refuses it.
  Either way a crash never leaves a complete-looking checkpoint.

  Returns:
    The checkpoint's location: absolute for a local one, as given for a remote one.
  """
  host = jax.tree.map(lambda leaf: np.asarray(jax.device_get(leaf)), params)
  files = {CONFIG_FILE: json.dumps(config_to_json(config), indent=2),
           META_FILE: json.dumps(dict(meta or {}), indent=2, default=str)}
  if paths.is_remote(path):
    return _save_params_remote(os.fspath(path).rstrip("/"), host, files, overwrite)
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  os.chmod(tmp, _umask_mode(0o777))
  try:
    _write_params(epath.Path(tmp) / PARAMS_DIR, host)
    for name, text in files.items():
      with open(os.path.join(tmp, name), "w") as f:
        f.write(text)
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
      os.rename(path, os.path.join(old, "previous"))
      os.rename(tmp, path)
      shutil.rmtree(old)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


def _write_params(directory: epath.Path, host: Any) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, host)


def _save_params_remote(path: str, host: Any, files: Mapping[str, str], overwrite: bool) -> str:
  """`save_params` into a bucket: the parameters, then config.json, then meta.json last."""
  paths.check_bucket(path, "params checkpoint")
  target = epath.Path(path)
  if target.exists():
    if not overwrite:
      raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    # meta.json goes first: from here on the old checkpoint is incomplete, and says so.
    if (target / META_FILE).exists():
      (target / META_FILE).unlink()
    paths.remove_tree(target)
  _write_params(target / PARAMS_DIR, host)
  for name in (CONFIG_FILE, META_FILE):   # meta.json last: it marks the export complete
    paths.write_text_atomically(target / name, files[name])
  return path


def load_params(path: str | os.PathLike) -> tuple[dict, ViLBertConfig, dict[str, Any]]:
  """Reads a directory written by `save_params`, local or remote: (params, config, meta).

  The restored tree (numpy arrays) is checked against the stored config, names and shapes.

  Raises:
    FileNotFoundError: `path` is not a directory written by `save_params`, or one whose
      writing did not finish (no meta.json, which is written last).
    ValueError: a damaged config or orbax checkpoint, or params that do not fit the config.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  # official.py imports this module; importing it back at call time avoids the cycle.
  from twelve_in_one.interop.official import check_params  # pylint: disable=import-outside-toplevel
  where = paths.as_path(os.fspath(path).rstrip("/") or "/")
  path = os.fspath(where)
  for name in (PARAMS_DIR, CONFIG_FILE):
    if not (where / name).exists():
      raise FileNotFoundError(f"{path}: not a params checkpoint (no {name}); write one with "
                              "`twelve-in-one convert` or save_params")
  if not (where / META_FILE).exists():
    raise FileNotFoundError(f"{path}: incomplete params checkpoint: no {META_FILE}, which is "
                            "written last, so the export that wrote it did not finish; write it "
                            "again (`twelve-in-one convert ... --overwrite`)")
  config_path = os.fspath(where / CONFIG_FILE)
  try:
    config = config_from_json(json.loads((where / CONFIG_FILE).read_text()), config_path)
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_path}: not valid JSON ({e})") from None
  meta_path = os.fspath(where / META_FILE)
  try:
    meta = json.loads((where / META_FILE).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{meta_path}: not valid JSON ({e})") from None
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      params = checkpointer.restore(where / PARAMS_DIR)
  except Exception as e:  # orbax/tensorstore errors on damaged files
    raise ValueError(f"{os.fspath(where / PARAMS_DIR)}: cannot restore the orbax checkpoint "
                     f"({type(e).__name__}: {_first_line(e)})") from None
  params = jax.tree.map(np.asarray, params)
  # Names and shapes against the stored config and the model the parameters are of: the
  # 12-in-1 task model, or the pretraining model (`meta["architecture"]`).
  check_params(params, config, architecture=architecture_of(meta))
  return params, config, meta


def architecture_of(meta: Mapping[str, Any]) -> str:
  """The model a params checkpoint holds, from its meta.json ("tasks" when unsaid)."""
  return str(meta.get(ARCHITECTURE_KEY, "tasks"))


def read_official_config(path: str | os.PathLike, **overrides: Any) -> ViLBertConfig:
  """`ViLBertConfig.from_json` for a local or remote (`gs://`) official JSON config."""
  location = paths.as_path(path)
  if not location.is_file():
    raise FileNotFoundError(f"{os.fspath(path)}: no such config file (an official JSON config "
                            "such as bert_base_6layer_6conect.json)")
  try:
    values = json.loads(location.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{os.fspath(path)}: not valid JSON ({e})") from None
  if not isinstance(values, dict):
    raise ValueError(f"{os.fspath(path)}: expected a JSON object of config keys, got "
                     f"{type(values).__name__}")
  return ViLBertConfig.from_official_dict(values, source=os.fspath(path), **overrides)
