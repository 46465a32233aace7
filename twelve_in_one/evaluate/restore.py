"""The model to evaluate: parameters and config from a training workdir or a params checkpoint.

Three kinds of path are accepted, told apart by what they hold:

* a training workdir (`<dir>/checkpoints/<iteration>/`): the newest readable iteration (or the
  one asked for). Only the parameters are read (a partial orbax restore; the Adam moments stay
  on disk), directly onto the trainer's mesh and shardings. The model config comes from the
  run config (`config.model`), with the answer-head sizes and the layers' layout (stacked
  with `scan_layers`, or per layer) read from the checkpoint's own metadata: the answer
  vocabularies were fixed when the run started, and the layout by its config.
* one iteration of a workdir (`<dir>/checkpoints/<iteration>`).
* a params checkpoint written by `twelve-in-one convert` / `checkpoint_io.save_params` (the
  config is stored beside the parameters).

Each may be local or on Cloud Storage (`gs://...`): orbax reads through epath and tensorstore.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from twelve_in_one import paths
from twelve_in_one.interop import checkpoint_io
from twelve_in_one.models import ViLBertForVLTasks, scan
from twelve_in_one.models.config import ViLBertConfig
from twelve_in_one.models.vilbert import init_variables
from twelve_in_one.train import sharding
from twelve_in_one.train.validate import run_model_config

# Answer heads whose width the data fixes: (config field, path of the output bias).
ANSWER_HEADS = (("num_vqa_answers", ("vil_prediction", "logit_fc_3", "bias")),
                ("num_gqa_answers", ("vil_prediction_gqa", "logit_fc_3", "bias")))


class ConfigMismatch(ValueError):
  """The checkpoint's parameters do not fit the run's model config (not a damaged file)."""


@dataclasses.dataclass
class LoadedModel:
  """Parameters ready to apply, with the config that built them."""
  params: Any
  config: ViLBertConfig
  source: str                 # the checkpoint directory actually read
  iteration: int | None       # training iterations behind a workdir checkpoint; None otherwise

  @property
  def model(self) -> ViLBertForVLTasks:
    return ViLBertForVLTasks(self.config)


def checkpoint_kind(path: str) -> tuple[str, str, int | None]:
  """("params" | "workdir", directory, iteration or None) for a checkpoint path.

  Paths go through `etils.epath`, so a `gs://` workdir is recognised as a local one is.
  """
  where = paths.as_path(os.fspath(path).rstrip("/") or "/")
  path = os.fspath(where)
  if (where / checkpoint_io.CONFIG_FILE).is_file() and (where / checkpoint_io.PARAMS_DIR).is_dir():
    return "params", path, None
  if where.parent.name == "checkpoints" and where.name.isdigit() and (where / "state").is_dir():
    return "workdir", os.fspath(where.parent.parent), int(where.name)
  if (where / "checkpoints").is_dir():
    return "workdir", path, None
  raise FileNotFoundError(
      f"{path}: neither a training workdir (with checkpoints/<iteration>/), one of its "
      f"iterations (checkpoints/<iteration>), nor a params checkpoint ({checkpoint_io.PARAMS_DIR}/ "
      f"and {checkpoint_io.CONFIG_FILE}, from `twelve-in-one convert`)")


def _manager(directory: str) -> ocp.CheckpointManager:
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add("state", ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler)
  registry.add("host", ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
  # read_only: evaluation must never create, clean up or rename anything in a run's workdir.
  previous = logging.getLogger("absl").level
  logging.getLogger("absl").setLevel(logging.ERROR)   # orbax warns that read_only is read-only
  try:
    return ocp.CheckpointManager(directory, handler_registry=registry,
                                 options=ocp.CheckpointManagerOptions(read_only=True,
                                                                      create=False))
  finally:
    logging.getLogger("absl").setLevel(previous)


def _stored_shapes(manager: ocp.CheckpointManager, step: int) -> dict[tuple[str, ...], tuple]:
  metadata = manager.item_metadata(step)["state"]
  tree = metadata.tree if hasattr(metadata, "tree") else metadata
  if not isinstance(tree, dict) or "params" not in tree:
    raise ValueError(f"{manager.directory}/{step}: the state holds no `params`")
  return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(
      tree["params"]).items()}


def _head_sizes(shapes: dict[tuple[str, ...], tuple]) -> dict[str, int]:
  return {field: int(shapes[path][0]) for field, path in ANSWER_HEADS if path in shapes}


def _stored_scanned(shapes: dict[tuple[str, ...], tuple]) -> bool:
  """Whether the checkpoint holds the encoder's layers stacked (a `scan_layers` run).

  The layout is the checkpoint's, whatever the config given to read it says, so a run
  trained with scanned layers is evaluated with them (the two layouts compute the same
  function) and the moments never need converting.
  """
  return any(len(path) > 2 and path[:2] == ("bert", "encoder")
             and path[2].startswith(scan.STACK_PREFIXES) for path in shapes)


def _check_shapes(stored: dict, expected: dict, where: str) -> None:
  problems = [f"{'/'.join(p)}: missing from the checkpoint" for p in expected if p not in stored]
  problems += [f"{'/'.join(p)}: shape {stored[p]} in the checkpoint, the configured model "
               f"has {expected[p]}" for p in expected if p in stored and stored[p] != expected[p]]
  if problems:
    raise ConfigMismatch(f"{where}: parameters do not fit the run's model config "
                     "(config.model):\n  " + "\n  ".join(problems[:10]))


def param_shardings(model_config: ViLBertConfig, mesh, rules: tuple) -> tuple[Any, Any]:
  """(abstract params, NamedShardings) of the model, as the trainer lays them out."""
  model = ViLBertForVLTasks(model_config)
  boxed = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
  abstract = nn.meta.unbox(boxed)["params"]
  logical = nn.get_partition_spec(boxed)["params"]
  return abstract, sharding.tree_shardings(abstract, logical, mesh, rules)


def load_model(source: str, config=None, *, mesh=None, rules: tuple = (),
               iteration: int | None = None) -> LoadedModel:
  """Loads the parameters at `source` (see the module docstring), sharded over `mesh`.

  Args:
    source: a training workdir, one of its iterations, or a params checkpoint.
    config: the run config (needed for a workdir: `config.model` names the model).
    mesh: place the parameters with the trainer's shardings on this mesh (default: one device).
    rules: the run's logical-axis rules (`config.mesh.rules`).
    iteration: a workdir iteration to read instead of the newest.
  """
  kind, directory, path_iteration = checkpoint_kind(source)
  iteration = path_iteration if iteration is None else iteration
  if kind == "params":
    params, model_config, _ = checkpoint_io.load_params(directory)
    if mesh is not None:
      _, shardings = param_shardings(model_config, mesh, rules)
      params = jax.device_put(params, shardings)
    return LoadedModel(params, model_config, directory, None)

  if config is None:
    raise ValueError(f"{directory}: a training workdir needs the run's config (--config) to "
                     "know its model")
  checkpoints = os.fspath(paths.as_path(directory) / "checkpoints")   # keeps gs:// intact
  manager = _manager(checkpoints)
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"{checkpoints}: no checkpoint yet (the run has not saved one)")
  if iteration is not None and iteration not in steps:
    raise FileNotFoundError(f"{checkpoints}: no iteration {iteration}; saved iterations are "
                            f"{steps}")
  candidates = [iteration] if iteration is not None else list(reversed(steps))
  for step in candidates:
    try:
      shapes = _stored_shapes(manager, step)
      model_config = run_model_config(config).replace(
          **_head_sizes(shapes), scan_layers=_stored_scanned(shapes))
      if mesh is None:
        mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
      abstract, shardings = param_shardings(model_config, mesh, rules)
      expected = {p: tuple(v.shape) for p, v in traverse_util.flatten_dict(abstract).items()}
      _check_shapes(shapes, expected, f"{checkpoints}/{step}")
      target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
      restore_args = jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding), target)
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item={"params": target}, restore_args={"params": restore_args},
          partial_restore=True)))
    except ConfigMismatch:
      raise   # a config mismatch is the user's to fix, not a damaged file
    except Exception as error:  # noqa: BLE001 - an unreadable step: fall back to the previous
      if iteration is not None or step == candidates[-1]:
        raise ValueError(f"{checkpoints}/{step}: cannot restore its parameters "
                         f"({type(error).__name__}: {str(error)[:300]})") from None
      logging.warning("checkpoint %s/%d is unreadable (%s); trying the previous one",
                      checkpoints, step, type(error).__name__)
      continue
    return LoadedModel(restored.state["params"], model_config, f"{checkpoints}/{step}", step)
  raise FileNotFoundError(f"{checkpoints}: no readable checkpoint")


def host_params(params: Any) -> Any:
  """The parameters as numpy arrays (for the single-example prediction path)."""
  return jax.tree.map(lambda leaf: np.asarray(jax.device_get(leaf)), params)
