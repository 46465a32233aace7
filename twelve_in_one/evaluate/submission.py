"""Evaluation-server files (VQA, GQA) and per-item prediction files, with their schema checks.

* VQA (EvalAI, test-dev / test-std): a JSON list `[{"question_id": int, "answer": str}, ...]`,
  one entry per question, each question once.
* GQA (EvalAI, test-dev / submission): a JSON list `[{"questionId": str, "prediction": str},
  ...]`, question ids as strings.

Both are what the official `eval_tasks.py` writes. The checks are written out
here (no JSON-schema dependency) and run on every file before it is written, so a file that
the server would reject is never produced; their errors name the entry and the field.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Iterable, Mapping, Sequence

from etils import epath

from twelve_in_one import paths
from twelve_in_one.tasks.registry import Task

# Schemas as (field, type) per entry; bool is excluded from int explicitly below.
VQA_FIELDS = (("question_id", int), ("answer", str))
GQA_FIELDS = (("questionId", str), ("prediction", str))
# The server file formats a task can name (`Task.server_format`). VG-QA shares the VQA head
# but has no evaluation server, so it names none.
SERVER_FORMATS = ("vqa", "gqa")


def _validate(entries: Any, fields: Sequence[tuple[str, type]], name: str, id_field: str
              ) -> None:
  if not isinstance(entries, list):
    raise ValueError(f"{name}: expected a JSON list of entries, got {type(entries).__name__}")
  seen: dict[Any, int] = {}
  wanted = {field for field, _ in fields}
  for index, entry in enumerate(entries):
    where = f"{name}: entry {index}"
    if not isinstance(entry, Mapping):
      raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    keys = set(entry)
    if keys != wanted:
      raise ValueError(f"{where}: has fields {sorted(keys)}; expected exactly {sorted(wanted)}")
    for field, kind in fields:
      value = entry[field]
      if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}: field {field!r} is {type(value).__name__} {value!r}; "
                         f"expected {kind.__name__}")
    if isinstance(entry[id_field], str) and not entry[id_field]:
      raise ValueError(f"{where}: field {id_field!r} is empty")
    if entry[id_field] in seen:
      raise ValueError(f"{where}: {id_field} {entry[id_field]!r} already in entry "
                       f"{seen[entry[id_field]]}")
    seen[entry[id_field]] = index


def validate_vqa(entries: Any, name: str = "VQA results") -> None:
  """Raises ValueError unless `entries` is a valid VQA server file's content."""
  _validate(entries, VQA_FIELDS, name, "question_id")


def validate_gqa(entries: Any, name: str = "GQA results") -> None:
  """Raises ValueError unless `entries` is a valid GQA server file's content."""
  _validate(entries, GQA_FIELDS, name, "questionId")
  for index, entry in enumerate(entries):
    if not entry["prediction"]:
      raise ValueError(f"{name}: entry {index}: field 'prediction' is empty")


def server_entries(task: Task, records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The server file entries of a classifier task's per-item records (they need `answer`)."""
  fmt = _server_format(task)
  if fmt is None:
    raise ValueError(f"task {task.name}: no evaluation-server format (Task.server_format)")
  entries = []
  for record in records:
    if "answer" not in record:
      raise ValueError(f"task {task.name}: question {record.get('question_id')} has no answer "
                       "string; the answer vocabulary (label2ans) is needed for server files")
    if fmt == "vqa":
      entries.append({"question_id": int(record["question_id"]), "answer": record["answer"]})
    else:
      entries.append({"questionId": str(record["question_id"]),
                      "prediction": record["answer"]})
  return entries


def _server_format(task: Task) -> str | None:
  """The task's server format, checked; None for a task without an evaluation server."""
  fmt = task.server_format
  if fmt is not None and fmt not in SERVER_FORMATS:
    raise ValueError(f"task {task.name}: server_format {fmt!r}; expected one of "
                     f"{SERVER_FORMATS} or None")
  if fmt is not None and task.head_spec.target != "classifier":
    raise ValueError(f"task {task.name}: server_format {fmt!r} needs an answer classifier, "
                     f"not head type {task.head_type!r}")
  return fmt


def write_file(path: str, write: Callable[[Any], None], mode: str = "w") -> str:
  """Writes a file through `write(handle)` so that readers never see a partial one.

  Local: a temporary sibling renamed into place. Remote (`gs://`, no rename): a local temporary
  file uploaded once `write` has finished. An object appears whole when its upload completes,
  but writing straight into one would upload the part written so far if `write` failed.
  Returns `path`.
  """
  target = paths.as_path(path)
  encoding = None if "b" in mode else "utf-8"
  if paths.is_remote(target):
    with tempfile.TemporaryDirectory(prefix="twelve_in_one_upload_") as scratch:
      local = os.path.join(scratch, target.name)
      with open(local, mode, encoding=encoding) as handle:
        write(handle)
      paths.copy_file(epath.Path(local), target)
    return path
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=os.fspath(target.parent))
  try:
    with os.fdopen(fd, mode, encoding=encoding) as handle:
      write(handle)
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes the file private; a plain open does not
    os.replace(tmp, os.fspath(target))
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def _umask() -> int:
  current = os.umask(0)
  os.umask(current)
  return current


def write_json(path: str, content: Any) -> str:
  """Writes JSON atomically; returns the path."""
  return write_file(path, lambda handle: json.dump(content, handle))


def write_server_file(task: Task, split: str, records: Sequence[Mapping[str, Any]],
                      out_dir: str) -> str | None:
  """Writes `<out_dir>/submissions/<vqa|gqa>_<task>_<split>.json`; None for other tasks."""
  fmt = _server_format(task)
  if fmt is None:
    return None
  entries = server_entries(task, records)
  path = os.path.join(out_dir, "submissions", f"{fmt}_{task.name}_{split}.json")
  (validate_vqa if fmt == "vqa" else validate_gqa)(entries, path)
  return write_json(path, entries)


def write_predictions(task: Task, split: str, records: Any, out_dir: str) -> str:
  """Writes the per-item predictions of one task and split as JSON; returns the path."""
  return write_json(os.path.join(out_dir, "predictions", f"{task.name}_{split}.json"), records)
