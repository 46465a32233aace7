"""Several processes in one run: joining them, and meeting before the first collective."""

from __future__ import annotations

import os

import jax


def maybe_initialize(config) -> None:
  """`jax.distributed.initialize()` where it applies: multi-host TPU/GPU or explicit settings.

  It must run before any other JAX call, and it fails on a plain single-host CPU/GPU, hence
  the guard: `initialize="auto"` runs it on TPU VMs with several workers, or when a coordinator
  address is configured (used by the local multi-process tests).
  """
  dist = config.distributed
  if jax.distributed.is_initialized():
    return
  if dist.coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                               num_processes=dist.num_processes, process_id=dist.process_id)
  elif dist.initialize == "always" or (dist.initialize == "auto" and
                                      os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",")):
    jax.distributed.initialize()


def wait_for_all_processes(name: str, timeout_s: int = 1800) -> None:
  """A coordination-service barrier (no collective) before the first collective of a run.

  Processes finish compiling at different times, and the CPU (gloo) collectives give up after
  30 s waiting for a peer, so they first meet here, where the wait may be long.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed   # the barrier of the coordination service
  distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
