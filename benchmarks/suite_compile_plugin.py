"""A pytest plugin that records, per test, how long JAX spent tracing, lowering and compiling.

Loaded by `benchmarks/suite_profile.py` (`-p suite_compile_plugin`, with this folder on
PYTHONPATH). Each pytest process appends one JSON line per JAX event to
`$SUITE_PROFILE_DIR/events.<pid>.jsonl`: the test running (`PYTEST_CURRENT_TEST`), the event
and its seconds. Events are JAX's own duration events (`jax.monitoring`): tracing to a jaxpr,
lowering to MLIR, and the backend's compile (absent when the persistent cache had the program).
Programs compiled in subprocesses that a test starts are not seen.
"""

from __future__ import annotations

import json
import os

import jax

_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}
_OUT = None


def _listener(event: str, duration: float, **kwargs) -> None:
  global _OUT
  kind = _EVENTS.get(event)
  if kind is None:
    return
  if _OUT is None:
    folder = os.environ.get("SUITE_PROFILE_DIR", ".")
    _OUT = open(os.path.join(folder, f"events.{os.getpid()}.jsonl"), "a", buffering=1)
  test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
  _OUT.write(json.dumps({"test": test, "kind": kind, "s": duration}) + "\n")


jax.monitoring.register_event_duration_secs_listener(_listener)
