"""Where the tests' ground truth lives: `tests/fixtures/` (see its README).

`$TWELVE_IN_ONE_FIXTURES` may point at another copy. A missing folder is an error, not a skip:
the parity, fixture and interop tests are what holds this project to the official numbers.
Imports nothing heavy, so data tests can use it without jax.
"""

from __future__ import annotations

import os
import pathlib

FIXTURES = pathlib.Path(os.environ.get("TWELVE_IN_ONE_FIXTURES",
                                       pathlib.Path(__file__).resolve().parent / "fixtures"))


def path(name: str) -> pathlib.Path:
  """`FIXTURES/name` (e.g. "vilbert_tiny", "vilbert_pretrain_tiny", "realdata")."""
  folder = FIXTURES / name
  if not folder.is_dir():
    raise FileNotFoundError(f"ground truth {folder} is missing: the tests need tests/fixtures/ "
                            "(or $TWELVE_IN_ONE_FIXTURES pointing at a copy of it)")
  return folder
