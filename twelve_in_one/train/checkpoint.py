"""Training checkpoints: one orbax composite of the device state and the host state.

* `state`: the TrainState arrays (parameters, Adam moments, update count), saved sharded and
  restored onto whatever mesh the restarting job has (the target carries the new shardings).
* `host`: JSON with the iteration, every task's data-iterator state, the DSG controllers and
  the rng seed, so a restart continues the exact same sequence of batches and decisions.

Saves are asynchronous. Orbax writes each step into a temporary directory and renames it when
complete, so a crash mid-save never leaves a step that looks finished; a step that is listed but
cannot be read (corrupted afterwards) is skipped with a warning naming it, and the previous one
is used.

The workdir may be a local folder or a gs:// location: orbax writes through epath and
tensorstore, and every process of a multi-host job joins each save (each writes its own
shards; orbax's barriers make the step appear once all have finished).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import orbax.checkpoint as ocp

from twelve_in_one import paths


def _state_dict(state) -> dict:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


class Checkpointer:
  """Saves and restores (TrainState, host JSON) pairs under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int = 3, asynchronous: bool = True):
    # epath, not os.path: `os.path.abspath("gs://b/run")` would make it a local folder.
    self.directory = paths.as_path(workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=asynchronous,
        preservation_policy=ocp.checkpoint_managers.LatestN(keep))
    self._manager = ocp.CheckpointManager(self.directory, options=options)

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

  def restore_latest(self, abstract_state) -> tuple[int, dict, dict] | None:
    """(iteration, state dict, host JSON) of the newest readable checkpoint, or None.

    `abstract_state` is a TrainState of `jax.ShapeDtypeStruct`s with the target shardings.
    """
    target = _state_dict(abstract_state)
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), host=ocp.args.JsonRestore()))
      except Exception as error:  # noqa: BLE001 - any unreadable step: fall back to the previous
        logging.warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                        self.directory, step, type(error).__name__, str(error)[:200])
        continue
      return step, restored.state, restored.host
    return None

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(state, shardings) -> Any:
  """ShapeDtypeStructs of `state` carrying `shardings` (the restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
