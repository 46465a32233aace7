"""Parameter names: our Flax tree <-> the official PyTorch state-dict names.

Our tree mirrors the official module tree, so the mapping is mechanical:

* `layer_3`, `v_layer_0`, `c_layer_5`, `logit_fc_2` <-> `layer.3`, `v_layer.0`, `c_layer.5`,
  `logit_fc.2` (Flax names cannot hold dots);
* leaves: `kernel` <-> `weight` transposed (PyTorch Linear weights are [out, in]);
  `embedding` <-> `weight`; LayerNorm `scale` <-> `weight`; `bias` <-> `bias`.

Official names that never enter the official forward and are not in our tree:
`bert.encoder.c_layer.*.biOutput.q_dense{1,2}.*` and `linguisic_logit.*`; and
`cls.predictions.decoder.weight`, which is the word-embedding matrix itself (tied).
"""

from __future__ import annotations

import re

_INDEXED = re.compile(r"^(layer|v_layer|c_layer|logit_fc)_(\d+)$")
_INDEXED_OFFICIAL = re.compile(r"(^|\.)(layer|v_layer|c_layer|logit_fc)\.(\d+)(?=\.)")

TIED_DECODER = "cls.predictions.decoder.weight"
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"

# Official parameters created but never used by forward; we do not build them.
UNUSED_OFFICIAL = re.compile(r"(^bert\.encoder\.c_layer\.\d+\.biOutput\.q_dense[12]\.(weight|bias)$)"
                             r"|(^linguisic_logit\.(weight|bias)$)")


def official_name(path: tuple[str, ...]) -> tuple[str, bool]:
  """Our parameter path -> (official state-dict name, whether to transpose the array)."""
  *modules, leaf = path
  parts = []
  for module in modules:
    match = _INDEXED.match(module)
    parts.append(f"{match.group(1)}.{match.group(2)}" if match else module)
  if leaf == "kernel":
    return ".".join(parts + ["weight"]), True
  if leaf in ("embedding", "scale"):
    return ".".join(parts + ["weight"]), False
  if leaf == "bias":
    return ".".join(parts + ["bias"]), False
  raise ValueError(f"parameter {'/'.join(path)}: unexpected leaf name {leaf!r}")


def normalise_official_name(name: str) -> str:
  """Accepts the spellings found in the wild: a `module.` prefix and legacy gamma/beta."""
  if name.startswith("module."):
    name = name[len("module."):]
  if name.endswith(".gamma"):
    name = name[:-len(".gamma")] + ".weight"
  elif name.endswith(".beta"):
    name = name[:-len(".beta")] + ".bias"
  return name


def is_unused_official(name: str) -> bool:
  return bool(UNUSED_OFFICIAL.match(name))
