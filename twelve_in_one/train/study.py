"""The paper's main comparison in miniature: one multi-task model against single-task models.

12-in-1's headline result (its Table 2) sets one model trained on all tasks
against one model per task. `run_study` repeats that comparison with any training config:

* the multi-task run trains every task of `config.tasks` together (round-robin, task tokens,
  DSG, exactly as `twelve-in-one train`), into `<workdir>/multi_task`;
* each single-task run trains one task alone, into `<workdir>/single/<task>`, with the same
  config otherwise: the same model, seed, optimizer, learning-rate schedule and number of
  iterations. Round-robin gives every task one update per iteration, so each task gets the
  same budget of updates and examples in both arms (fewer in the multi-task arm while DSG
  stops a task, which the table reports);
* with `config.pretraining.enabled` (the `smoke` main job) a third arm: the pretraining phase
  runs once, into `<workdir>/pretrain`, and the multi-task run is repeated from its parameters,
  into `<workdir>/multi_task_pretrained` (the paper's recipe; the first two arms start from
  scratch, so the columns separate what multi-task training and pretraining each bring);
* every arm is evaluated on every task's whole validation split, and the table is printed
  and written as `study.json` and `study.md`.

Every run is an ordinary training workdir, so an interrupted study resumes where it stopped:
a run whose `results.json` is complete is reused, any other one resumes from its checkpoint.
The data is generated and prepared once, into `<workdir>/release` and `<workdir>/prepared`
(for configs with `data.generate_if_missing`, e.g. the `smoke` main job).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable

from twelve_in_one import paths
from twelve_in_one.train import pretraining_phase
from twelve_in_one.train.entry import ensure_data
from twelve_in_one.train.loop import train_and_evaluate
from twelve_in_one.train.validate import resolve_tasks

MULTI_DIR = "multi_task"
PRETRAINED_MULTI_DIR = "multi_task_pretrained"
SINGLE_DIR = "single"


def _finished_results(run_dir: str, task_names: list[str]) -> dict | None:
  """The run's results.json when it exists and scores every task; None otherwise."""
  path = paths.as_path(run_dir) / "results.json"
  if not path.exists():
    return None
  try:
    results = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return None
  if all(isinstance(results.get(name), dict) and results[name].get("score") is not None
         for name in task_names):
    return results
  return None


def _updates_per_task(run_dir: str) -> dict[str, int]:
  """Training updates each task received, counted from the run's metrics.jsonl."""
  updates: dict[str, int] = {}
  path = paths.as_path(run_dir) / "metrics.jsonl"
  if not path.exists():
    return updates
  with path.open("r") as f:
    for line in f:
      row = json.loads(line)
      if row.get("kind") == "train" and "updates" in row:
        updates[row["task"]] = updates.get(row["task"], 0) + int(row["updates"])
  return updates


def _run(config, run_dir: str, task_names: list[str], chance: dict | None,
         say: Callable[[str], None]) -> dict:
  results = _finished_results(run_dir, task_names)
  if results is not None:
    say(f"reusing the finished run in {run_dir}")
    return results
  say(f"training {', '.join(task_names)} in {run_dir}")
  with config.unlocked():
    config.tasks = ",".join(task_names)
  outcome = train_and_evaluate(config, run_dir, chance=chance)
  if outcome.preempted:
    raise InterruptedError(f"{run_dir} was preempted; rerun the same command to resume")
  results = _finished_results(run_dir, task_names)
  if results is None:
    raise RuntimeError(f"{run_dir}: training finished but results.json does not score "
                       f"every task of {task_names}")
  return results


def study_table(task_rows: list[dict]) -> str:
  """The side-by-side Markdown table (scores in percent), with the mean over tasks.

  Rows with a `pretrained` score get the column of the multi-task run from the pretrained model.
  """
  pretrained = bool(task_rows) and all(row.get("pretrained") is not None for row in task_rows)
  columns = ["single", "multi"] + (["pretrained"] if pretrained else [])
  header = "| task | metric | chance | single-task | multi-task | multi − single |"
  if pretrained:
    header += " multi-task, pretrained | pretrained − single |"
  lines = [header, "|" + "---|" * (header.count("|") - 1)]

  def cells(chance: str, values: dict) -> str:
    text = (f" {chance} | {100 * values['single']:.2f} | {100 * values['multi']:.2f} | "
            f"{100 * (values['multi'] - values['single']):+.2f} |")
    if pretrained:
      text += (f" {100 * values['pretrained']:.2f} | "
               f"{100 * (values['pretrained'] - values['single']):+.2f} |")
    return text

  for row in task_rows:
    chance = "" if row["chance"] is None else f"{100 * row['chance']:.1f}"
    lines.append(f"| {row['task']} | {row['metric']} |" + cells(chance, row))
  if task_rows:
    mean = {key: sum(r[key] for r in task_rows) / len(task_rows) for key in columns}
    chances = [r["chance"] for r in task_rows if r["chance"] is not None]
    mean_chance = (f"{100 * sum(chances) / len(chances):.1f}"
                   if len(chances) == len(task_rows) else "")
    lines.append("| **mean** | |" + cells(mean_chance, mean))
  return "\n".join(lines) + "\n"


def run_study(config, workdir: str, say: Callable[[str], None] | None = None) -> dict:
  """Trains the multi-task model and one single-task model per task; returns the comparison.

  Args:
    config: a training config (e.g. `configs/twelve_in_one.py:smoke`); `config.tasks` are the
      tasks compared.
    workdir: the study's folder (one workdir per run inside it, plus study.json/study.md).
    say: progress messages (default: logging.info).

  Returns:
    {"tasks": [row per task], "mean": {...}, "iterations": ..., "table": Markdown}; each row
    holds task, metric, chance, single, multi, pretrained (None without the pretraining
    phase) and the updates each arm gave the task.
  """
  say = say or (lambda message: logging.info("%s", message))
  config = copy.deepcopy(config)
  pretraining_phase.check(config)
  with_pretraining = pretraining_phase.enabled(config)
  paths.check_bucket(workdir, "--workdir")
  paths.as_path(workdir).mkdir(parents=True, exist_ok=True)
  summary = ensure_data(config, workdir)   # once, shared by every run of the study
  chance = None
  if summary is not None:
    chance = {name: entry["baselines"]["chance"] for name, entry in summary["tasks"].items()}
  task_names = [task.name for task in resolve_tasks(config)]

  from_scratch = copy.deepcopy(config)
  with from_scratch.unlocked():
    from_scratch.pretraining.enabled = False
  multi_dir = os.path.join(workdir, MULTI_DIR)
  multi = _run(copy.deepcopy(from_scratch), multi_dir, task_names, chance, say)
  multi_updates = _updates_per_task(multi_dir)
  pretrained = None
  if with_pretraining:
    say(f"pretraining in {os.path.join(workdir, pretraining_phase.PRETRAIN_DIR)}")
    location, preempted = pretraining_phase.pretrain_first(config, workdir)
    if preempted:
      raise InterruptedError(f"{workdir}/{pretraining_phase.PRETRAIN_DIR} was preempted; rerun "
                             "the same command to resume")
    from_pretrained = copy.deepcopy(from_scratch)
    with from_pretrained.unlocked():
      from_pretrained.init.checkpoint = location
    pretrained = _run(from_pretrained, os.path.join(workdir, PRETRAINED_MULTI_DIR), task_names,
                      chance, say)
  rows = []
  for name in task_names:
    single_dir = os.path.join(workdir, SINGLE_DIR, name)
    single = _run(copy.deepcopy(from_scratch), single_dir, [name], chance, say)
    rows.append(dict(task=name, metric=multi[name]["metric"],
                     chance=None if chance is None else chance.get(name),
                     single=float(single[name]["score"]), multi=float(multi[name]["score"]),
                     pretrained=None if pretrained is None else float(pretrained[name]["score"]),
                     single_updates=_updates_per_task(single_dir).get(name),
                     multi_updates=multi_updates.get(name)))
  table = study_table(rows)
  columns = ("single", "multi") + (("pretrained",) if pretrained is not None else ())
  mean = {key: sum(r[key] for r in rows) / len(rows) for key in columns}
  out = {"tasks": rows, "mean": mean, "table": table, "seed": config.seed,
         "model": config.model.name,
         "iterations": max(int(multi[name].get("iteration", 0)) for name in task_names)}
  paths.write_text_atomically(paths.as_path(workdir) / "study.json", json.dumps(out, indent=1))
  paths.write_text_atomically(paths.as_path(workdir) / "study.md", table)
  return out
