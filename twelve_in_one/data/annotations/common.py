"""Helpers shared by the annotation readers: file loading, checks, soft targets.

Every helper turns the failure modes of the official code (bare KeyError,
AssertionError, JSONDecodeError without a line, a silently empty split) into a
:class:`DataError` naming the file, the record and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from twelve_in_one.data.annotations.clean import drop_test_images
from twelve_in_one.data.errors import DataError, SkipReport

PathLike = str | os.PathLike[str]
# The reason under which the "clean" filter's drops are counted.
CLEAN_REASON = "image in a test set (clean filter)"


@dataclasses.dataclass
class AnnotationSplit:
  """The entries of one dataset split, plus what the reader skipped.

  Behaves like the list of entries (``len``, iteration, indexing).

  Attributes:
    entries: one plain dict per example, with the official field names.
    skipped: counts of records dropped (or altered) on purpose, per reason.
    source: the main file the split was read from.
    split: the split name.
  """

  entries: list[dict[str, Any]]
  skipped: SkipReport
  source: str
  split: str

  def __len__(self) -> int:
    return len(self.entries)

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return iter(self.entries)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.entries[index]


def check_split(split: str, valid: Sequence[str], dataset: str) -> None:
  """Raise ValueError unless ``split`` is one of the dataset's splits."""
  if split not in valid:
    raise ValueError(f"{dataset} has no split {split!r}; valid splits: {list(valid)}")


def require_file(path: PathLike, what: str) -> str:
  """Return ``path`` as a string, or raise DataError if the file is missing."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError.at(path, "file", "does not exist", what)
  return path


def read_json(path: PathLike, what: str, *, unique_keys: bool = False) -> Any:
  """Load a JSON file; a missing or malformed file raises DataError.

  With ``unique_keys`` a key repeated within one object (which ``json`` would silently
  resolve to the last value) is a DataError naming the key.
  """
  path = require_file(path, what)

  def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) < len(pairs):
      seen: set[str] = set()
      repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
      raise DataError.at(path, f"key {repeated!r}", "appears twice in one object (the later "
                         "value would silently replace the earlier)", "unique keys")
    return result

  with open(path, "rb") as handle:
    try:
      return json.load(handle, object_pairs_hook=no_repeats if unique_keys else None)
    except json.JSONDecodeError as error:
      raise DataError.at(path, f"line {error.lineno} column {error.colno}",
                         f"malformed JSON ({error.msg})", what) from error


def read_jsonl(path: PathLike, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file.

  Raises:
    DataError: naming the file and line number for a malformed line or a
      line that is not a JSON object.
  """
  path = require_file(path, what)
  with open(path, encoding="utf-8") as handle:
    for line_number, line in enumerate(handle, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise DataError.at(path, f"line {line_number}",
                           f"malformed JSON ({error.msg} at column {error.colno})",
                           what) from error
      if not isinstance(record, dict):
        raise DataError.at(path, f"line {line_number}",
                           f"holds a JSON {type(record).__name__}", what)
      yield line_number, record


def read_pickle(path: PathLike, what: str) -> Any:
  """Load a pickle file (a trusted dataset file); failures raise DataError.

  Pickles written by Python 2 (e.g. the RefCOCO ``refs(unc).p``) hold their text as byte
  strings, which Python 3 decodes as ASCII by default. When that fails they are re-read with
  the byte strings kept as bytes, and each is decoded as UTF-8 (what Python 2 programs almost
  always wrote: "café" is ``caf\\xc3\\xa9``), falling back to latin-1 only for bytes that are not
  valid UTF-8. Decoding everything as latin-1 would turn "café" into "cafÃ©". Python 2
  ``unicode`` objects are stored as UTF-8 and load unchanged either way.
  """
  path = require_file(path, what)
  with open(path, "rb") as handle:
    blob = handle.read()
  try:
    try:
      return pickle.loads(blob)
    except UnicodeDecodeError:
      pass
    try:
      return _decode_py2_text(pickle.loads(blob, encoding="bytes"))
    except (TypeError, ValueError, AttributeError):
      # Objects whose state must be text (datetime, ...): the standard latin-1 route.
      return pickle.loads(blob, encoding="latin1")
  except Exception as error:
    raise DataError.at(path, "file", f"cannot be unpickled ({error})", what) from error


def _decode_py2_text(value: Any) -> Any:
  """``value`` with every bytes object (a Python 2 ``str``) decoded, containers rebuilt."""
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return value.decode("latin-1")
  if isinstance(value, dict):
    result = copy.copy(value)       # keeps a subclass and its state (defaultdict's factory)
    result.clear()
    result.update((_decode_py2_text(key), _decode_py2_text(item)) for key, item in value.items())
    return result
  if isinstance(value, (list, tuple, set, frozenset)):
    return type(value)(_decode_py2_text(item) for item in value)
  if isinstance(value, np.ndarray) and value.dtype == object:
    result = np.empty_like(value)
    for index, item in np.ndenumerate(value):
      result[index] = _decode_py2_text(item)
    return result
  return value


def require_fields(record: Any, fields: Sequence[str], path: PathLike, where: str) -> None:
  """Raise DataError naming the missing fields if ``record`` lacks any of them."""
  if not isinstance(record, Mapping):
    raise DataError.at(path, where, f"is a {type(record).__name__}",
                       f"an object with fields {list(fields)}")
  missing = [field for field in fields if field not in record]
  if missing:
    raise DataError.at(path, where, f"lacks fields {missing}",
                       f"fields {list(fields)}")


def require_text(value: Any, path: PathLike, where: str, what: str) -> str:
  """Return ``value`` if it is a string with a non-blank character, else raise DataError."""
  if not isinstance(value, str):
    raise DataError.at(path, where, f"is a {type(value).__name__}, not text", what)
  if not value.strip():
    raise DataError.at(path, where, f"is empty ({value!r})", what)
  return value


def check_questions(records: Sequence[Mapping[str, Any]], path: PathLike,
                    row: Callable[[int], str], *, text_field: str | None = "question",
                    id_field: str = "question_id",
                    id_key: Callable[[Any], Any] | None = None) -> None:
  """Raise DataError naming file, row and field for an empty question or a repeated id.

  The official readers pass both silently: an empty question trains on [CLS] [SEP] alone,
  and a repeated id makes two examples that evaluation files and servers cannot tell apart.

  Args:
    records: the question records, in file order.
    path: their file.
    row: names record ``i`` in messages (e.g. ``"record 3 (question_id 7)"``).
    text_field: the question text's field; None for files without text (VQA targets).
    id_field: the id field, unique within the file.
    id_key: maps an id to what must be unique (e.g. ``int`` for GQA's string ids).
  """
  first: dict[Any, int] = {}
  for index, record in enumerate(records):
    if text_field is not None:
      require_text(record[text_field], path, f"{row(index)}, field {text_field!r}",
                   "the question text")
    value = record[id_field]
    key = id_key(value) if id_key is not None else value
    try:
      earlier = first.setdefault(key, index)
    except TypeError:
      raise DataError.at(path, f"{row(index)}, field {id_field!r}", f"is a "
                         f"{type(value).__name__}", f"an integer {id_field}") from None
    if earlier != index:
      raise DataError.at(path, f"{row(index)}, field {id_field!r}", f"repeats the "
                         f"{id_field} of {row(earlier)}", f"each {id_field} once")


def check_scores(labels: Any, scores: Any, path: PathLike, where: str
                 ) -> tuple[list[int], list[float]]:
  """The answer's labels as ints and scores as finite floats, else a DataError naming the field.

  A NaN or infinite soft score would pass every other check and surface only as a NaN loss.
  """
  try:
    labels = [int(label) for label in labels]
  except (TypeError, ValueError, OverflowError) as error:
    raise DataError.at(path, f"{where}, field 'labels'", f"holds a non-integer ({error})",
                       "integer answer labels") from None
  try:
    scores = [float(score) for score in scores]
  except (TypeError, ValueError) as error:
    raise DataError.at(path, f"{where}, field 'scores'", f"holds a non-number ({error})",
                       "a soft score per label") from None
  for position, score in enumerate(scores):
    if not math.isfinite(score):
      label = labels[position] if position < len(labels) else "?"
      raise DataError.at(path, f"{where}, field 'scores'", f"score {position} (label {label}) "
                         f"is {score}", "finite soft scores (0.3/0.6/0.9/1 for VQA)")
  return labels, scores


def require_nonempty(entries: Sequence[Any], path: PathLike, split: str) -> None:
  """Raise DataError if a split came out empty (the official code trains on nothing)."""
  if not entries:
    raise DataError.at(path, f"split {split!r}", "is empty", "at least one entry")


def drop_clean_ids(entries: list[dict[str, Any]], clean_image_ids: frozenset[int] | None,
                   skipped: SkipReport, image_key: str = "image_id") -> list[dict[str, Any]]:
  """Drop entries whose image id is in ``clean_image_ids``, counting them.

  See :mod:`twelve_in_one.data.annotations.clean`; ``None`` keeps everything.
  """
  if not clean_image_ids:
    return entries
  kept, dropped = drop_test_images(entries, clean_image_ids, image_key=image_key)
  skipped.add(CLEAN_REASON, dropped)
  return kept


@dataclasses.dataclass(frozen=True)
class AnswerVocab:
  """An answer vocabulary: ``ans2label`` (answer -> index) and ``label2ans``."""

  ans2label: Mapping[str, int]
  label2ans: Sequence[str]

  @property
  def num_labels(self) -> int:
    """Size of the classifier output (``len(ans2label)`` as in the official code)."""
    return len(self.ans2label)


def load_answer_vocab(ans2label_path: PathLike, label2ans_path: PathLike | None = None
                      ) -> AnswerVocab:
  """Load ``trainval_ans2label.pkl`` (and ``trainval_label2ans.pkl``) and check them.

  Without ``label2ans_path`` the list is rebuilt from ``ans2label``. The two
  must be inverse of each other with labels ``0..n-1``.
  """
  ans2label = read_pickle(ans2label_path, "a pickled dict answer -> label index")
  if not isinstance(ans2label, Mapping):
    raise DataError.at(ans2label_path, "file", f"holds a {type(ans2label).__name__}",
                       "a pickled dict answer -> label index")
  if sorted(ans2label.values()) != list(range(len(ans2label))):
    raise DataError.at(ans2label_path, "labels", "are not exactly 0..n-1",
                       f"{len(ans2label)} distinct labels 0..{len(ans2label) - 1}")
  if label2ans_path is None:
    label2ans = [""] * len(ans2label)
    for answer, label in ans2label.items():
      label2ans[label] = answer
    return AnswerVocab(dict(ans2label), label2ans)
  label2ans = read_pickle(label2ans_path, "a pickled list label index -> answer")
  if not isinstance(label2ans, (list, tuple)) or len(label2ans) != len(ans2label):
    raise DataError.at(label2ans_path, "file",
                       f"holds {type(label2ans).__name__} of length "
                       f"{len(label2ans) if hasattr(label2ans, '__len__') else '?'}",
                       f"a list of {len(ans2label)} answers matching {ans2label_path}")
  for label, answer in enumerate(label2ans):
    if ans2label.get(answer) != label:
      raise DataError.at(label2ans_path, f"label {label} ({answer!r})",
                         f"maps back to {ans2label.get(answer)!r} in {ans2label_path}",
                         f"ans2label[{answer!r}] == {label}")
  return AnswerVocab(dict(ans2label), list(label2ans))


def check_answer(answer: Any, num_labels: int, path: PathLike, where: str) -> dict[str, Any]:
  """Validate a ``{labels, scores}`` answer record; labels must be in the vocabulary.

  Returns:
    The answer as a new dict with ``labels`` as a list of ints and
    ``scores`` as a list of floats (other fields kept).
  """
  require_fields(answer, ("labels", "scores"), path, where)
  labels, scores = check_scores(answer["labels"], answer["scores"], path, where)
  if len(labels) != len(scores):
    raise DataError.at(path, where, f"{len(labels)} labels but {len(scores)} scores",
                       "one score per label")
  outside = [label for label in labels if not 0 <= label < num_labels]
  if outside:
    raise DataError.at(path, where, f"answer labels {outside} are outside the answer "
                       f"vocabulary", f"labels in [0, {num_labels})")
  return {**answer, "labels": labels, "scores": scores}


def build_soft_target(labels: Sequence[int], scores: Sequence[float], num_labels: int, *,
                      source: PathLike = "<answer>", where: str = "answer") -> np.ndarray:
  """The official target vector: zeros with ``scores`` scattered at ``labels``.

  Matches ``torch.zeros(num_labels).scatter_(0, labels, scores)`` (a later
  duplicate label overwrites an earlier one). An empty label list gives the
  all-zero target, as the official code does for unlabelled examples.

  Args:
    labels: answer indices.
    scores: one soft score per label.
    num_labels: size of the answer vocabulary.
    source: the file the answer came from, named in errors.
    where: which record it is (e.g. ``"question_id 5"``), named in errors.

  Raises:
    DataError: a label lies outside ``[0, num_labels)``.
  """
  target = np.zeros((num_labels,), dtype=np.float32)
  if len(labels) != len(scores):
    raise DataError.at(source, where, f"{len(labels)} labels but {len(scores)} scores",
                       "one score per label")
  for label, score in zip(labels, scores, strict=True):
    if not 0 <= int(label) < num_labels:
      raise DataError.at(source, where, f"label {label} is outside the answer "
                         "vocabulary", f"a label in [0, {num_labels})")
    target[int(label)] = score
  return target
