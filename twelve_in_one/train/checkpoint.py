"""Training checkpoints: one orbax composite of the device state and the host state.

* `state`: the TrainState arrays (parameters, Adam moments, update count), saved sharded and
  restored onto whatever mesh the restarting job has (the target carries the new shardings).
* `host`: JSON with the iteration, every task's data-iterator state, the DSG controllers and
  the rng seed, so a restart continues the exact same sequence of batches and decisions.

Saves are asynchronous. Orbax writes each step into a temporary directory and renames it when
complete, so a crash mid-save never leaves a step that looks finished.

What a restart does with the steps it finds:

* **Another model's steps are refused.** `check_compatible` compares the shapes and dtypes the
  run's config gives with the newest step's stored metadata before anything is restored or
  written, and raises `CheckpointMismatchError` naming the first differing leaves. Resuming
  with, say, another `vocab_size` would otherwise start from scratch and overwrite the old run.
* **Damaged steps are set aside, never deleted.** A step that is listed but cannot be read
  (truncated or corrupted afterwards) is moved to `<workdir>/checkpoints-damaged/<step>-<time>`
  (outside orbax's folder, so it is neither listed nor pruned, and the step number is free to
  be saved again), reported in one line, and the previous step is used.

The workdir may be a local folder or a gs:// location: orbax writes through epath and
tensorstore, and every process of a multi-host job joins each save (each writes its own
shards; orbax's barriers make the step appear once all have finished).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from twelve_in_one import paths
from twelve_in_one.train import distributed

DAMAGED_DIR = "checkpoints-damaged"
# Differences named in a refusal (the rest are counted): enough to see the pattern, one line.
_SHOWN_DIFFERENCES = 3


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoints hold another model's state than the config describes."""


def _state_dict(state) -> dict:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _leaf_specs(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """`"params/bert/.../kernel" -> (shape, dtype)` for every array leaf of `tree`."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  specs = {}
  for path, leaf in flat:
    name = "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)
    specs[name] = (tuple(int(n) for n in leaf.shape), np.dtype(leaf.dtype).name)
  return specs


def _describe(spec: tuple[tuple[int, ...], str] | None) -> str:
  return "absent" if spec is None else f"{spec[0]} {spec[1]}"


def state_differences(expected, stored) -> list[str]:
  """Leaves whose shape or dtype differ between two state trees (or that one of them lacks),
  each as `"name: <stored> in the checkpoint, <expected> in this config"`: the parameters
  first (their names say most), then the moments and the step, each sorted by name."""
  want, have = _leaf_specs(expected), _leaf_specs(stored)
  return [f"{name}: {_describe(have.get(name))} in the checkpoint, "
          f"{_describe(want.get(name))} in this config"
          for name in sorted(set(want) | set(have), key=lambda n: (not n.startswith("params/"), n))
          if want.get(name) != have.get(name)]


class Checkpointer:
  """Saves and restores (TrainState, host JSON) pairs under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int = 3, asynchronous: bool = True):
    if keep < 1:   # LatestN(0) would delete every step, the final one included
      raise ValueError(f"config.checkpoint.keep={keep}; expected >= 1 (the checkpoints kept)")
    # epath, not os.path: `os.path.abspath("gs://b/run")` would make it a local folder.
    self.workdir = paths.as_path(workdir)
    self.directory = self.workdir / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=asynchronous,
        preservation_policy=ocp.checkpoint_managers.LatestN(keep))
    # Handlers named up front, so a step's metadata can be read before any save or restore.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "host": ocp.JsonCheckpointHandler()})

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, iteration: int, state, host: dict, *, wait: bool = False) -> None:
    """Starts saving (asynchronously unless `wait`) the state after `iteration` iterations."""
    self._manager.save(iteration, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_state_dict(state)), host=ocp.args.JsonSave(host)),
                       force=True)
    if wait:
      self._manager.wait_until_finished()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def _stored_state(self, step: int):
    """The step's stored state tree (shapes and dtypes, no values); raises when unreadable."""
    return self._manager.item_metadata(step)["state"]

  def _check_step(self, step: int, target) -> None:
    stored = self._stored_state(step)
    if stored is None:
      raise ValueError(f"checkpoint {self.directory}/{step} has no readable state metadata")
    differences = state_differences(target, stored)
    if differences:
      more = len(differences) - _SHOWN_DIFFERENCES
      raise CheckpointMismatchError(
          f"{paths.describe(self.directory)}/{step} holds another model's state: "
          + "; ".join(differences[:_SHOWN_DIFFERENCES])
          + (f" (and {more} more leaves)" if more > 0 else "")
          + "; resume with the config that wrote it, or train in a new --workdir "
          "(nothing was changed)")

  def check_compatible(self, abstract_state) -> None:
    """Raises CheckpointMismatchError when the newest step with readable metadata was written
    for other shapes or dtypes than `abstract_state`'s. Reads only; writes nothing."""
    target = _state_dict(abstract_state)
    for step in reversed(self.all_steps()):
      try:
        self._stored_state(step)
      except Exception:  # noqa: BLE001 - an unreadable step is restore_latest's to set aside
        continue
      self._check_step(step, target)
      return

  def restore_latest(self, abstract_state, report: Callable[[str], None] = logging.warning
                     ) -> tuple[int, dict, dict] | None:
    """(iteration, state dict, host JSON) of the newest readable checkpoint, or None.

    `abstract_state` is a TrainState of `jax.ShapeDtypeStruct`s with the target shardings.
    A step of other shapes raises CheckpointMismatchError (nothing is moved); an unreadable
    one is set aside (`set_aside`) with one line to `report`, and the previous one is tried.
    """
    target = _state_dict(abstract_state)
    for step in reversed(self.all_steps()):
      try:
        self._check_step(step, target)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), host=ocp.args.JsonRestore()))
      except CheckpointMismatchError:
        raise
      except Exception as error:  # noqa: BLE001 - any unreadable step: fall back to the previous
        if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error):
          raise   # this machine's limits, not the step's fault: keep the step where it is
        moved_to = self.set_aside(step)
        report(f"checkpoint {paths.describe(self.directory)}/{step} is unreadable "
               f"({type(error).__name__}: {_first_line(error)}); moved it to {moved_to} and "
               "resuming from the previous one")
        continue
      return step, restored.state, restored.host
    return None

  def set_aside(self, step: int) -> str:
    """Moves step `step` to `<workdir>/checkpoints-damaged/<step>-<UTC time>`; returns where.

    Local folders are renamed; on object stores every file is copied before the originals are
    deleted, so an interruption leaves a copy, never nothing. Process 0 moves it; the others
    wait for it and then forget the step.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    destination = self.workdir / DAMAGED_DIR / f"{step}-{stamp}"
    if jax.process_index() == 0:
      source = self.directory / str(step)
      if paths.is_remote(source):
        paths.copy_tree(source, destination)
        paths.remove_tree(source)
      else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(os.fspath(source), os.fspath(destination))
    distributed.wait_for_all_processes(f"twelve_in_one_set_aside_{step}")
    self._manager.reload()   # forget the step: it may be saved again
    return paths.describe(destination)

  def close(self) -> None:
    """Finishes a save in flight and closes (idempotent)."""
    if self._manager is None:
      return
    manager, self._manager = self._manager, None
    manager.wait_until_finished()
    manager.close()


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else "no message"


def abstract_like(state, shardings) -> Any:
  """ShapeDtypeStructs of `state` carrying `shardings` (the restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
