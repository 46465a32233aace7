"""The README's main job in several seeds: its wall time, and each task's score per seed.

    .venv/bin/python benchmarks/main_job_seeds.py [--seeds=0,1,2] [--root=workdir/seeds]
        [--json_out=FILE] [-- EXTRA_TRAIN_FLAGS ...]

Runs the README's first command (`twelve-in-one train --config configs/twelve_in_one.py:smoke`)
once per seed, one after the other, each in a fresh workdir `<root>/seed<k>` with
`--config.seed=k` and an empty XLA compilation cache of its own, so every run's wall time is
a cold one (generation, preparation, the pretraining phase, compiles, training, the final
evaluation). The seed changes the generated release too (its scenes, texts and answers), the
parameter initialisation and the data order. A workdir already holding a finished run is
reused: its table is read and its time is not measured again.

Prints, per task: the chance level, the score of each seed, their mean and minimum, and the
smallest margin over chance (each seed against its own release's chance level); then each
run's wall time. Run it on a quiet machine: other work
on the cores moves the times (not the scores, which are bitwise reproducible).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CLI = pathlib.Path(sys.executable).with_name("twelve-in-one")


def _run(seed: int, root: pathlib.Path, extra: list[str]) -> tuple[dict, float | None]:
  """Runs (or reuses) one seed; returns its results.json and wall seconds (None: reused)."""
  workdir = root / f"seed{seed}"
  results = workdir / "results.json"
  if results.exists():
    return json.loads(results.read_text()), None
  cache = root / f"xla_seed{seed}"
  shutil.rmtree(cache, ignore_errors=True)
  command = [str(CLI), "train", f"--config={REPO / 'configs' / 'twelve_in_one.py'}:smoke",
             f"--workdir={workdir}", f"--config.seed={seed}",
             f"--config.compilation_cache_dir={cache}",
             f"--config.pretraining.compilation_cache_dir={cache}", *extra]
  print(" ".join(command), flush=True)
  started = time.perf_counter()
  with open(root / f"seed{seed}.log", "w") as log:
    subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
  seconds = time.perf_counter() - started
  shutil.rmtree(cache, ignore_errors=True)
  return json.loads(results.read_text()), seconds


def seeds_table(seeds: list[int], runs: dict[int, dict]) -> str:
  """Markdown: task, metric, chance, one column per seed, mean, min and the smallest margin.

  Each seed generates its own release, so each has its own chance levels: the chance column is
  their mean, and the margin is the smallest of (a seed's score − that seed's chance).
  """
  header = ("| task | metric | chance | " + " | ".join(f"seed {s}" for s in seeds)
            + " | mean | min | smallest margin over chance |")
  lines = [header, "|" + "---|" * (header.count("|") - 1)]
  for task, row in runs[seeds[0]].items():
    scores = [100 * runs[s][task]["score"] for s in seeds]
    chances = [runs[s][task].get("chance") for s in seeds]
    known = all(chance is not None for chance in chances)
    chance = f"{100 * sum(chances) / len(chances):.1f}" if known else ""
    margin = (f"{min(score - 100 * c for score, c in zip(scores, chances)):+.1f}"
              if known else "")
    lines.append(f"| {task} | {row['metric']} | {chance} | "
                 + " | ".join(f"{score:.2f}" for score in scores)
                 + f" | {sum(scores) / len(scores):.2f} | {min(scores):.2f} | {margin} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
  parser.add_argument("--root", default="workdir/seeds", help="where the workdirs go")
  parser.add_argument("--json_out", default="", help="also write the figures here")
  args, extra = parser.parse_known_args()
  extra = [flag for flag in extra if flag != "--"]
  seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
  root = pathlib.Path(args.root).resolve()
  root.mkdir(parents=True, exist_ok=True)
  runs, seconds = {}, {}
  for seed in seeds:
    runs[seed], seconds[seed] = _run(seed, root, extra)
  table = seeds_table(seeds, runs)
  print(f"\nthe main job, seeds {seeds} ({datetime.date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores):\n")
  print(table)
  for seed in seeds:
    wall = seconds[seed]
    print(f"seed {seed}: " + ("reused a finished run" if wall is None else
                              f"{wall // 60:.0f} min {wall % 60:.0f} s"))
  if args.json_out:
    pathlib.Path(args.json_out).write_text(json.dumps(
        {"seeds": seeds, "results": {str(s): runs[s] for s in seeds},
         "seconds": {str(s): seconds[s] for s in seeds}, "table": table,
         "date": str(datetime.date.today()), "cores": os.cpu_count()}, indent=1))


if __name__ == "__main__":
  main()
