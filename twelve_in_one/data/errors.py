"""Errors and skip accounting shared by every reader in the data package.

The official dataset classes fail with bare ``AssertionError``/``KeyError``/
``TypeError`` (or silently drop records), which leaves users guessing which
file is broken. Every reader here raises :class:`DataError` instead, and its
message always names the file, the record (key, row, line or id) and what was
expected. Records that the official code drops on purpose are counted in a
:class:`SkipReport` so the drop is visible.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator, Mapping


class DataError(ValueError):
  """A data file is missing, malformed or inconsistent.

  Build it with :meth:`DataError.at` so the message has the same shape
  everywhere: ``<file>: <record>: <problem>; expected <expectation>``.
  """

  @classmethod
  def at(
      cls,
      path: str | os.PathLike[str],
      record: str,
      problem: str,
      expected: str | None = None,
  ) -> DataError:
    """Create an error that names the file, the record and the expectation.

    Args:
      path: the file (or directory) the bad data came from.
      record: which record inside it, e.g. ``"line 12"`` or ``"image id 9"``.
      problem: what is wrong with it.
      expected: what the reader expected instead, if that helps the user.
    """
    message = f"{os.fspath(path)}: {record}: {problem}"
    if expected:
      message += f"; expected {expected}"
    return cls(message)


class SkipReport:
  """Counts records a reader dropped (or altered) on purpose, per reason.

  The official readers silently skip, for example, answers outside the
  answer vocabulary or training images that belong to a test set. We keep
  the same behaviour but count every such record, so the numbers can be
  logged and checked.
  """

  def __init__(self) -> None:
    self._counts: collections.Counter[str] = collections.Counter()

  def add(self, reason: str, count: int = 1) -> None:
    """Record ``count`` records dropped for ``reason``."""
    if count:
      self._counts[reason] += count

  def merge(self, other: SkipReport) -> None:
    """Add every count of ``other`` into this report."""
    self._counts.update(other._counts)

  def __getitem__(self, reason: str) -> int:
    return self._counts.get(reason, 0)

  def __iter__(self) -> Iterator[str]:
    return iter(self._counts)

  def __len__(self) -> int:
    return len(self._counts)

  @property
  def total(self) -> int:
    """The number of records counted over all reasons."""
    return sum(self._counts.values())

  def as_dict(self) -> Mapping[str, int]:
    """The counts as a plain dict, e.g. for logging as JSON."""
    return dict(self._counts)

  def __repr__(self) -> str:
    return f"SkipReport({dict(self._counts)!r})"
