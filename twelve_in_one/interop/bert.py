"""Hugging Face BERT checkpoints -> the text stream and masked-LM head of our ViLBERT.

The official training starts from bert-base-uncased: `from_pretrained` fills every
parameter whose name matches a BERT parameter and leaves the rest (visual stream, co-attention,
poolers, heads) at their random init. We do the same:

| HF name (`BertModel` / `BertForPreTraining`) | ours |
|---|---|
| `embeddings.*` / `bert.embeddings.*` | `bert/embeddings` (word, position, type, LayerNorm) |
| `encoder.layer.i.*` / `bert.encoder.layer.i.*` | `bert/encoder/layer_i` |
| `cls.predictions.transform.*`, `cls.predictions.bias` | `cls/predictions` |
| `cls.predictions.decoder.weight` (and `.bias`) | tied: checked equal, not stored |
| `pooler.*`, `cls.seq_relationship.*` | skipped (see below) |
| `embeddings.position_ids` | skipped: a buffer, not a parameter |

BERT's tanh pooler and next-sentence head have no place in ViLBERT: its `t_pooler` maps to
bi_hidden_size with ReLU, and its alignment head reads the fused two-stream vector.

A BERT with fewer layers than the text stream fills the first layers and leaves the others at
their init (reported); one with more layers is an error, as is any other unexpected name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import jax
import numpy as np

from twelve_in_one import paths
from twelve_in_one.interop.checkpoint_io import read_state_dict
from twelve_in_one.interop.names import TIED_DECODER, WORD_EMBEDDINGS, normalise_official_name
from twelve_in_one.interop.official import (Rng, group_names, official_init, official_param_table,
                                            path_keys, to_model_layout, unrolled_config)
from twelve_in_one.models import ViLBertConfig, scan

# Weight files a Hugging Face model directory may hold, in order of preference.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_SKIPPED = (
    (re.compile(r"^bert\.embeddings\.(position_ids|token_type_ids)$"),
     "buffer, not a parameter"),
    (re.compile(r"^bert\.pooler\."), "BERT's tanh pooler; ViLBERT's t_pooler is a different "
                                     "layer (to bi_hidden_size, ReLU)"),
    (re.compile(r"^cls\.seq_relationship\."), "BERT's next-sentence head; ViLBERT's alignment "
                                              "head reads the fused vector"),
)
_TEXT_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.")


@dataclasses.dataclass
class BertLoadReport:
  """What `load_bert` did with every name of a BERT state dict."""
  source: str
  loaded: list[str] = dataclasses.field(default_factory=list)       # official (ViLBERT) names
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (name, why)
  tied: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)   # only with allow_unexpected
  text_not_loaded: list[str] = dataclasses.field(default_factory=list)  # text stream, left init

  def format(self) -> str:
    """A human-readable multi-line report."""
    lines = [f"BERT weights from {self.source}: {len(self.loaded)} parameters loaded into the "
             "text stream and the masked-LM head"]
    if self.tied:
      lines.append("tied (equal to the word embeddings): " + ", ".join(self.tied))
    lines += [f"skipped {name}: {why}" for name, why in self.skipped]
    if self.unexpected:
      lines.append("ignored unexpected keys: " + ", ".join(self.unexpected))
    if self.text_not_loaded:
      lines.append("text-stream and masked-LM parameters not in the checkpoint, left at their "
                   "init:")
      lines += [f"  {line}" for line in group_names(self.text_not_loaded)]
    return "\n".join(lines)


def _official(name: str) -> str:
  """HF name -> the ViLBERT official name it corresponds to (same module tree under `bert.`)."""
  name = normalise_official_name(name)
  if name.startswith(("bert.", "cls.")):
    return name
  return "bert." + name      # `BertModel` names have no prefix


def load_bert(state_dict: Mapping[str, Any], config: ViLBertConfig, *,
              params: Mapping[str, Any] | None = None, rng: Rng = 0,
              allow_unexpected: bool = False, source: str = "BERT state dict",
              dtype: Any = np.float32) -> tuple[dict, BertLoadReport]:
  """Copies BERT weights into the text stream and masked-LM head of a ViLBERT parameter tree.

  Args:
    state_dict: HF `BertModel` or `BertForPreTraining` names -> arrays.
    config: the ViLBERT config; `hidden_size`, `intermediate_size`, `vocab_size`, ... must
      match the BERT (shapes are checked, the mismatched key and both shapes are named).
    params: the tree to start from, in `config`'s layout; by default a fresh
      `official_init(config, rng)`.
    rng: seed for that fresh init.
    allow_unexpected: drop (and report) names that are not BERT parameters we know.
    source: how messages name the state dict.
    dtype: dtype of the loaded arrays.

  Returns:
    (params, report): a new nested dict of numpy arrays, and what was loaded or skipped.
  """
  table = official_param_table(config)
  # The table's paths are per layer: with stacked layers (`scan_layers`), load into the
  # unrolled layout and stack again at the end.
  unrolled = unrolled_config(config)
  if params is None:
    start = official_init(unrolled, rng, dtype=dtype)
  else:
    start = scan.to_unrolled(params, config) if config.scan_layers else params
  values = {path_keys(path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(start)[0]}
  report = BertLoadReport(source=source)
  mismatched, unexpected, tied = [], [], {}
  for raw, array in state_dict.items():
    array = np.asarray(array)
    name = _official(raw)
    reason = next((why for pattern, why in _SKIPPED if pattern.match(name)), None)
    if reason is not None:
      report.skipped.append((raw, reason))
      continue
    if name in (TIED_DECODER, "cls.predictions.decoder.bias"):
      tied[name] = (raw, array)       # checked once the matrices they alias are known
      continue
    layer = _TEXT_LAYER.match(name)
    if name not in table or not name.startswith(("bert.embeddings.", "bert.encoder.layer.",
                                                  "cls.predictions.")):
      hint = ""
      if layer and int(layer.group(1)) >= config.num_hidden_layers:
        hint = (f" (BERT layer {layer.group(1)}, but the text stream has "
                f"num_hidden_layers={config.num_hidden_layers})")
      unexpected.append(raw + hint)
      continue
    slot = table[name]
    if tuple(array.shape) != slot.official_shape:
      mismatched.append(f"{raw}: shape {tuple(array.shape)} in {source}, but the config needs "
                        f"{slot.official_shape} (as {name})")
      continue
    values[slot.path] = np.ascontiguousarray(array.T if slot.transpose else array,
                                             dtype=dtype)
    report.loaded.append(name)

  if mismatched:
    raise ValueError(f"{source}: {len(mismatched)} shape mismatch(es) against the config:\n  "
                     + "\n  ".join(mismatched))
  if unexpected and not allow_unexpected:
    raise ValueError(f"{source}: {len(unexpected)} unexpected key(s), not BERT parameters of "
                     "this model:\n  " + "\n  ".join(unexpected)
                     + "\n(pass allow_unexpected to drop them)")
  report.unexpected = unexpected

  # The HF decoder is tied to the word embeddings, and newer HF versions also save its bias,
  # which is `cls.predictions.bias` itself. Both must agree with what they alias.
  for alias, target in ((TIED_DECODER, WORD_EMBEDDINGS),
                        ("cls.predictions.decoder.bias", "cls.predictions.bias")):
    if alias in tied:
      raw, array = tied[alias]
      if target not in report.loaded:
        raise ValueError(f"{source}: {raw} is present but {target}, which it is tied to, is not")
      stored = values[table[target].path]
      if stored.shape != array.shape or not np.array_equal(stored, array.astype(stored.dtype)):
        raise ValueError(f"{source}: {raw} differs from {target}; they are one tied parameter")
      report.tied.append(raw)

  report.text_not_loaded = [name for name in table if name not in report.loaded and (
      name.startswith(("bert.embeddings.", "bert.encoder.layer.", "cls.predictions.")))]
  params_out = jax.tree_util.tree_map_with_path(lambda path, _: values[path_keys(path)],
                                                start)
  return to_model_layout(params_out, config), report


def check_bert_config(hf_config: Mapping[str, Any], config: ViLBertConfig,
                      source: str = "config.json") -> None:
  """Raises ValueError naming every HF BERT config value that our text stream cannot match.

  Shapes are checked on load anyway; this catches what shapes cannot show: the number of heads,
  the activation (HF "gelu" is the exact erf form the official code uses; "gelu_new" is not),
  the LayerNorm epsilon and the position-embedding type.
  """
  problems = []
  for key, ours in (("hidden_size", config.hidden_size),
                    ("num_attention_heads", config.num_attention_heads),
                    ("intermediate_size", config.intermediate_size),
                    ("vocab_size", config.vocab_size),
                    ("type_vocab_size", config.type_vocab_size),
                    ("max_position_embeddings", config.max_position_embeddings),
                    ("hidden_act", config.hidden_act),
                    ("layer_norm_eps", config.layer_norm_eps)):
    if key in hf_config and hf_config[key] != ours:
      problems.append(f"{key}={hf_config[key]!r}, but the ViLBERT config has {ours!r}")
  if hf_config.get("position_embedding_type", "absolute") != "absolute":
    problems.append(f"position_embedding_type={hf_config['position_embedding_type']!r}; only "
                    "'absolute' exists in ViLBERT")
  if hf_config.get("num_hidden_layers", 0) > config.num_hidden_layers:
    problems.append(f"num_hidden_layers={hf_config['num_hidden_layers']}, more than the text "
                    f"stream's {config.num_hidden_layers}")
  if problems:
    raise ValueError(f"{source}: this BERT does not fit the ViLBERT text stream:\n  "
                     + "\n  ".join(problems))


def load_bert_checkpoint(path: str | os.PathLike, config: ViLBertConfig,
                         **kwargs: Any) -> tuple[dict, BertLoadReport]:
  """`load_bert` from a file, or from a HF model directory (its `config.json` is checked too).

  Both may be local or on Cloud Storage (`gs://...`). Extra keyword arguments go to
  `load_bert`.
  """
  path = os.fspath(path)
  # epath, not os.path: a BERT download may have been copied to a bucket.
  location = paths.as_path(path)
  if location.is_dir():
    found = [location / name for name in WEIGHT_FILES if (location / name).is_file()]
    if not found:
      raise FileNotFoundError(f"{path}: no BERT weights (looked for {list(WEIGHT_FILES)})")
    hf_config = location / "config.json"
    if hf_config.is_file():
      check_bert_config(json.loads(hf_config.read_text()), config, os.fspath(hf_config))
    path = os.fspath(found[0])
  return load_bert(read_state_dict(path), config, source=path, **kwargs)
