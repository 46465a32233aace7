"""Where the test suite's time goes: wall time, and per test file its time and JAX's compiles.

    .venv/bin/python benchmarks/suite_profile.py [--workers=2] [--top=20] [--json_out=FILE]
        [-- PYTEST_ARGS ...]

Runs the README's test command (`pytest -q -n WORKERS --dist loadfile tests`) cold, with an
empty XLA compilation cache, JUnit timings and `suite_compile_plugin` loaded in every pytest
process, then prints the wall time and a table per test file: the summed time of its tests (on
a shared machine, so a file's figure includes the waits on the other worker's work), the
backend compile seconds of the programs it compiled first, and its tracing and lowering
seconds. Tracing events nest (a `jax.make_jaxpr` inside a jitted function's trace counts in
both), so the trace column is an upper bound. Subprocesses' compiles are not counted.

Run it on a quiet machine: other work on the cores moves every figure.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

REPO = pathlib.Path(__file__).resolve().parents[1]


def _file_of(classname: str) -> str:
  """`tests.data.test_prepare` -> `tests/data/test_prepare.py` (JUnit's classname)."""
  parts = classname.split(".")
  while parts and not parts[-1].startswith("test_"):
    parts.pop()   # a test class inside the module
  return "/".join(parts) + ".py"


def summarise(junit: pathlib.Path, events_dir: pathlib.Path) -> dict:
  per_file: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  tests = 0
  for case in ElementTree.parse(junit).iter("testcase"):
    per_file[_file_of(case.get("classname"))]["test_s"] += float(case.get("time"))
    tests += 1
  for path in events_dir.glob("events.*.jsonl"):
    for line in path.read_text().splitlines():
      event = json.loads(line)
      name = event["test"].split("::")[0] or "(collection)"
      per_file[name][event["kind"] + "_s"] += event["s"]
  totals = collections.Counter()
  for figures in per_file.values():
    totals.update(figures)
  return {"tests": tests, "files": {name: dict(figures) for name, figures in per_file.items()},
          "totals": dict(totals)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--top", type=int, default=20, help="files shown, longest first")
  parser.add_argument("--json_out", default=None)
  args, pytest_args = parser.parse_known_args()
  pytest_args = [a for a in pytest_args if a != "--"]
  with tempfile.TemporaryDirectory(prefix="suite_profile_") as scratch:
    scratch_path = pathlib.Path(scratch)
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(scratch_path / "xla_cache"),
               SUITE_PROFILE_DIR=scratch,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "benchmarks"),
                                                        os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "pytest", "-q", "-n", str(args.workers), "--dist",
               "loadfile", "-p", "suite_compile_plugin", f"--junitxml={scratch}/junit.xml",
               *(pytest_args or ["tests"])]
    started = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, env=env)
    wall = time.perf_counter() - started
    result = summarise(scratch_path / "junit.xml", scratch_path)
  result.update(wall_s=wall, returncode=run.returncode, workers=args.workers,
                date=datetime.date.today().isoformat(), machine=platform.processor() or
                platform.machine(), cpus=os.cpu_count())
  totals = result["totals"]
  print(f"\nwall {wall / 60:.1f} min for {result['tests']} tests on {args.workers} workers "
        f"(exit {run.returncode}); summed test time {totals.get('test_s', 0):.0f} s, backend "
        f"compile {totals.get('compile_s', 0):.0f} s, lowering {totals.get('lower_s', 0):.0f} s, "
        f"tracing (nested, an upper bound) {totals.get('trace_s', 0):.0f} s\n")
  print("| file | test s | compile s | lower s | trace s (upper bound) |")
  print("|---|---|---|---|---|")
  ranked = sorted(result["files"].items(), key=lambda item: -item[1].get("test_s", 0))
  for name, figures in ranked[:args.top]:
    print(f"| {name} | {figures.get('test_s', 0):.0f} | {figures.get('compile_s', 0):.0f} | "
          f"{figures.get('lower_s', 0):.0f} | {figures.get('trace_s', 0):.0f} |")
  if args.json_out:
    pathlib.Path(args.json_out).write_text(json.dumps(result, indent=1))
  sys.exit(run.returncode)


if __name__ == "__main__":
  main()
