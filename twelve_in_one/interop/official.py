"""Official PyTorch state dicts <-> our parameter tree, with a report of what happened.

    config = ViLBertConfig.from_json("bert_base_6layer_6conect.json")
    params, report = import_official(read_state_dict("multi_task_model.bin"), config)
    print(report.format())
    official = export_official(params, config)       # OrderedDict[name, np.ndarray]

The mapping itself is `names.official_name` (our path -> official name, transpose). Here:
the spellings found in the wild (`module.` prefix, legacy `gamma`/`beta`), the tied MLM decoder,
the parameters the official model creates but never uses, and parameters absent from the file
(e.g. every task head and the task-token table in `pretrained_model.bin`), which are initialised
exactly as the official `init_bert_weights` does (`official_init`): N(0, initializer_range)
Linear weights and embeddings, zero biases, LayerNorm 1/0 -- the same rule our modules'
initialisers implement, applied per leaf with numpy so that filling a few missing heads does not
cost a trace and compile of the whole model.

With `config.scan_layers` our tree holds stacked layers (`models/scan.py`); the official names
stay per layer. Import, official init and export all work in the unrolled layout
(`unrolled_config`) and stack or unstack at the boundary, so a checkpoint maps to the same
values whichever layout the model uses, and import -> export is bitwise exact in both.

Two architectures share the names: `"tasks"` (`ViLBertForVLTasks`, the 12-in-1 model) and
`"pretraining"` (`ViLBertForPretraining`, the official `BertForMultiModalPreTraining`: only
`bert.*` and `cls.*`, as in `pretrained_model.bin`). Every function below takes
`architecture`; its tree is the one that model builds.

Our own checkpoints (orbax) are written and read by `checkpoint_io.save_params` /
`load_params`, re-exported here.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Mapping

import jax
import numpy as np

from twelve_in_one.interop.checkpoint_io import load_params, save_params  # noqa: F401
from twelve_in_one.interop.names import (TIED_DECODER, WORD_EMBEDDINGS, is_unused_official,
                                         normalise_official_name, official_name)
from twelve_in_one.models import ViLBertConfig, ViLBertForVLTasks, init_params
from twelve_in_one.models import scan
from twelve_in_one.models.pretraining import ViLBertForPretraining, init_pretraining_params

Rng = int | np.random.Generator
ARCHITECTURES = ("tasks", "pretraining")

# Export: the tied decoder is the word-embedding matrix itself (one tensor under two names).
TIED_ALIASES = {TIED_DECODER: WORD_EMBEDDINGS}


@dataclasses.dataclass(frozen=True)
class ParamSlot:
  """Where one official name lands in our tree."""
  path: tuple[str, ...]
  transpose: bool
  shape: tuple[int, ...]          # our shape (kernels are [in, out])

  @property
  def official_shape(self) -> tuple[int, ...]:
    return tuple(reversed(self.shape)) if self.transpose else self.shape


@functools.lru_cache(maxsize=8)
def abstract_params(config: ViLBertConfig, architecture: str = "tasks") -> dict:
  """The parameter tree of `config`'s model as ShapeDtypeStructs (no allocation).

  `architecture`: "tasks" (`ViLBertForVLTasks`) or "pretraining" (`ViLBertForPretraining`).
  Cached per config (a trace of the whole model); treat the result as read-only.
  """
  if architecture == "tasks":
    model = ViLBertForVLTasks(config)
    return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  if architecture == "pretraining":
    pretraining = ViLBertForPretraining(config)
    return jax.eval_shape(lambda: init_pretraining_params(pretraining, jax.random.key(0)))
  raise ValueError(f"architecture={architecture!r}; expected one of {list(ARCHITECTURES)}")


def unrolled_config(config: ViLBertConfig) -> ViLBertConfig:
  """`config` with one parameter entry per layer: the layout the official names address."""
  return config.replace(scan_layers=False) if config.scan_layers else config


def to_model_layout(params: dict, config: ViLBertConfig) -> dict:
  """An unrolled tree -> `config`'s layout (stacked when `config.scan_layers`)."""
  return scan.to_scanned(params, config) if config.scan_layers else params


def path_keys(path) -> tuple[str, ...]:
  """A `tree_flatten_with_path` key path -> plain strings ("bert", "encoder", "layer_0", ...)."""
  return tuple(str(getattr(k, "key", k)) for k in path)


def official_param_table(config: ViLBertConfig, architecture: str = "tasks"
                         ) -> "collections.OrderedDict[str, ParamSlot]":
  """Official name -> ParamSlot for every parameter of our model under `config`.

  The paths are those of the unrolled layout (`unrolled_config`), one per official name.
  """
  table: collections.OrderedDict[str, ParamSlot] = collections.OrderedDict()
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      abstract_params(unrolled_config(config), architecture))[0]:
    keys = path_keys(path)
    name, transpose = official_name(keys)
    table[name] = ParamSlot(keys, transpose, tuple(leaf.shape))
  return table


def _init_leaf(kind: str, shape: tuple[int, ...], std: float, gen: np.random.Generator,
               dtype: Any) -> np.ndarray:
  """The official `BertPreTrainedModel.init_bert_weights` rule for one parameter."""
  if kind in ("kernel", "embedding"):   # Linear weights and every nn.Embedding (padding row too)
    return (gen.standard_normal(shape) * std).astype(dtype)
  if kind == "scale":                    # LayerNorm weight
    return np.ones(shape, dtype)
  if kind == "bias":                     # Linear and LayerNorm biases, cls.predictions.bias
    return np.zeros(shape, dtype)
  raise ValueError(f"no official init rule for a parameter named {kind!r}")


def _generator(rng: Rng) -> np.random.Generator:
  return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def official_init(config: ViLBertConfig, rng: Rng = 0, *, dtype: Any = np.float32,
                  architecture: str = "tasks") -> dict:
  """A fresh parameter tree, initialised as the official code does (numpy, no model trace).

  Drawn layer by layer in the unrolled layout, then stacked: the same seed gives the same
  values with `scan_layers` on or off.
  """
  gen = _generator(rng)
  params = jax.tree_util.tree_map_with_path(
      lambda path, leaf: _init_leaf(path_keys(path)[-1], tuple(leaf.shape),
                                    config.initializer_range, gen, dtype),
      abstract_params(unrolled_config(config), architecture))
  return to_model_layout(params, config)


def group_names(names: list[str]) -> list[str]:
  """Collapses official names into module-level lines ("vil_prediction.* (6 params)")."""
  groups: collections.OrderedDict[str, list[str]] = collections.OrderedDict()
  for name in names:
    parts = name.split(".")
    if parts[0] == "bert":
      # up to the layer index ("bert.encoder.c_layer.3"), else the module ("bert.embeddings")
      numeric = [i for i, part in enumerate(parts) if part.isdigit()]
      depth = numeric[0] + 1 if numeric else 2
    else:
      depth = 2 if parts[0] == "cls" else 1
    groups.setdefault(".".join(parts[:depth]), []).append(name)
  lines = []
  for prefix, members in groups.items():
    lines.append(members[0] if len(members) == 1 else f"{prefix}.* ({len(members)} params)")
  return lines


@dataclasses.dataclass
class ConversionReport:
  """What `import_official` did with every name of the state dict."""
  source: str
  loaded: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)      # initialised, not loaded
  unused: list[str] = dataclasses.field(default_factory=list)       # dropped: never in forward
  tied: list[str] = dataclasses.field(default_factory=list)         # checked equal, not stored
  unexpected: list[str] = dataclasses.field(default_factory=list)   # only with allow_unexpected
  renamed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)

  def format(self) -> str:
    """A human-readable multi-line report."""
    lines = [f"converted {self.source}: {len(self.loaded)} parameters loaded"]
    if self.renamed:
      lines.append(f"renamed {len(self.renamed)} legacy names (module. prefix, gamma/beta), "
                   f"e.g. {self.renamed[0][0]} -> {self.renamed[0][1]}")
    if self.tied:
      lines.append("tied (equal to the word embeddings, not stored twice): "
                   + ", ".join(self.tied))
    if self.unused:
      lines.append(f"dropped {len(self.unused)} official parameters that never enter the "
                   "official forward:")
      lines += [f"  {line}" for line in group_names(self.unused)]
    if self.missing:
      lines.append(f"missing from the file, initialised as the official code does "
                   f"(N(0, initializer_range) weights, zero biases, LayerNorm 1/0): "
                   f"{len(self.missing)} parameters")
      lines += [f"  {line}" for line in group_names(self.missing)]
    if self.unexpected:
      lines.append(f"ignored {len(self.unexpected)} unexpected keys (--ignore_unexpected):")
      lines += [f"  {name}" for name in self.unexpected]
    lines += [f"note: {note}" for note in self.notes]
    return "\n".join(lines)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _hint(name: str, config: ViLBertConfig, architecture: str = "tasks") -> str:
  """Why a key may be unexpected: usually a config that does not match the checkpoint."""
  if architecture == "pretraining" and not name.startswith(("bert.", "cls.")):
    return " (a task-model parameter: the pretraining model has only bert.* and cls.*)"
  if name == "bert.embeddings.task_embeddings.weight" and not config.task_specific_tokens:
    return " (the checkpoint has task tokens: set task_specific_tokens true)"
  if ".dyLinear_" in name and not config.dynamic_attention:
    return " (the checkpoint uses dynamic attention: set dynamic_attention true)"
  if name.startswith("cls.") and not config.with_pretraining_heads:
    return " (pretraining head: set with_pretraining_heads true)"
  for kind, count in ((".layer.", config.num_hidden_layers),
                      (".v_layer.", config.v_num_hidden_layers),
                      (".c_layer.", config.num_co_attention_blocks)):
    if f"encoder{kind}" in name:
      index = int(name.split(f"encoder{kind}")[1].split(".")[0])
      if index >= count:
        return f" (layer {index}, but the config has {count} such layers)"
  return ""


def _normalise(state_dict: Mapping[str, Any], source: str):
  out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
  renamed, origin = [], {}
  for raw, value in state_dict.items():
    name = normalise_official_name(raw)
    if name in out:
      raise ValueError(f"{source}: {origin[name]!r} and {raw!r} both name the parameter "
                       f"{name!r}")
    if name != raw:
      renamed.append((raw, name))
    origin[name] = raw
    out[name] = np.asarray(value)
  return out, renamed


def import_official(state_dict: Mapping[str, Any], config: ViLBertConfig, *,
                    allow_unexpected: bool = False, rng: Rng = 0,
                    dtype: Any = np.float32, source: str = "state dict",
                    architecture: str = "tasks") -> tuple[dict, ConversionReport]:
  """Maps an official state dict onto our parameter tree.

  Args:
    state_dict: official name -> array (numpy, or anything `np.asarray` accepts).
    config: the model the parameters are for; every shape is checked against it.
    allow_unexpected: ignore (and report) names that are neither ours, nor tied, nor
      known-unused; otherwise they are an error.
    rng: seed (or numpy Generator) for the parameters missing from the file.
    dtype: dtype of the returned arrays (float64 for float64 parity checks).
    source: how to name the state dict in messages (e.g. its file name).
    architecture: "tasks" or "pretraining" (see the module docstring); with "pretraining",
      the task heads and task tokens of a task checkpoint are unexpected keys.

  Returns:
    (params, report): a nested dict of numpy arrays shaped like `init_params` (stacked layers
    when `config.scan_layers`), and the report.

  Raises:
    ValueError: unexpected keys, shape mismatches (key and both shapes named), two names for
      one parameter, or a tied decoder that differs from the word embeddings.
  """
  normalised, renamed = _normalise(state_dict, source)
  table = official_param_table(config, architecture)
  report = ConversionReport(source=source, renamed=renamed)
  values: dict[tuple[str, ...], np.ndarray] = {}
  unexpected, mismatched = [], []
  decoder = None
  for name, array in normalised.items():
    if name == TIED_DECODER:
      decoder = array
    elif name in table:
      slot = table[name]
      if tuple(array.shape) != slot.official_shape:
        mismatched.append(f"{name}: shape {tuple(array.shape)} in {source}, but the config "
                          f"needs {slot.official_shape}")
        continue
      values[slot.path] = np.ascontiguousarray(array.T if slot.transpose else array,
                                               dtype=dtype)
      report.loaded.append(name)
    elif is_unused_official(name):
      report.unused.append(name)
    else:
      unexpected.append(name)

  if decoder is not None:
    word = table[WORD_EMBEDDINGS]
    if tuple(decoder.shape) != word.official_shape:
      mismatched.append(f"{TIED_DECODER}: shape {tuple(decoder.shape)} in {source}, but the "
                        f"config needs {word.official_shape} (it is tied to {WORD_EMBEDDINGS})")
    elif word.path in values:
      if not np.array_equal(values[word.path], np.asarray(decoder, dtype=dtype)):
        diff = np.max(np.abs(values[word.path] - np.asarray(decoder, dtype=dtype)))
        raise ValueError(f"{source}: {TIED_DECODER} differs from {WORD_EMBEDDINGS} (max |diff| "
                         f"{diff:.3g}); in the official model they are one tied matrix")
      report.tied.append(TIED_DECODER)
    else:
      values[word.path] = np.asarray(decoder, dtype=dtype)
      report.loaded.append(WORD_EMBEDDINGS)
      report.notes.append(f"{WORD_EMBEDDINGS} is absent; taken from the tied {TIED_DECODER}")

  if mismatched:
    raise ValueError(f"{source}: {len(mismatched)} shape mismatch(es) against the config:\n  "
                     + "\n  ".join(mismatched))
  if unexpected:
    if not allow_unexpected:
      raise ValueError(
          f"{source}: {len(unexpected)} unexpected key(s), not parameters of this model:\n  "
          + "\n  ".join(name + _hint(name, config, architecture) for name in unexpected)
          + "\n(pass allow_unexpected / --ignore_unexpected to drop them)")
    report.unexpected = unexpected

  report.missing = [name for name, slot in table.items() if slot.path not in values]
  if report.missing:
    gen = _generator(rng)
    for name in report.missing:
      slot = table[name]
      values[slot.path] = _init_leaf(slot.path[-1], slot.shape, config.initializer_range, gen,
                                     dtype)
    backbone = [n for n in table if n.startswith("bert.")]
    lost = [n for n in report.missing if n.startswith("bert.")]
    if len(lost) > len(backbone) // 2:
      report.notes.append(f"{len(lost)} of {len(backbone)} backbone parameters are missing: is "
                          f"{source} a ViLBERT checkpoint for this config?")

  params = jax.tree_util.tree_map_with_path(lambda path, _: values[path_keys(path)],
                                            abstract_params(unrolled_config(config),
                                                            architecture))
  return to_model_layout(params, config), report


def _unused_official_params(exported: Mapping[str, np.ndarray], initializer_range: float,
                            architecture: str = "tasks"
                            ) -> "collections.OrderedDict[str, np.ndarray]":
  """`q_dense1/2` of every co-attention block and (task model only) `linguisic_logit`,
  initialised as the official code does. They never enter forward, but a strict
  `load_state_dict` expects them."""
  rng = np.random.default_rng(0)
  out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()

  def linear(prefix: str, weight_shape: tuple[int, ...], dtype) -> None:
    out[f"{prefix}.weight"] = (rng.standard_normal(weight_shape) * initializer_range).astype(dtype)
    out[f"{prefix}.bias"] = np.zeros(weight_shape[:1], dtype)

  for name, array in exported.items():
    for used, unused in ((".biOutput.dense1.weight", ".biOutput.q_dense1"),
                         (".biOutput.dense2.weight", ".biOutput.q_dense2")):
      if name.endswith(used):
        linear(name[:-len(used)] + unused, array.shape, array.dtype)
  if WORD_EMBEDDINGS in exported and architecture == "tasks":
    word = exported[WORD_EMBEDDINGS]
    linear("linguisic_logit", (1, word.shape[1]), word.dtype)
  return out


def _has_stacks(params: Mapping[str, Any]) -> bool:
  """Whether `params` holds scanned stacks (names that are not official modules)."""
  encoder = params.get("bert", {}).get("encoder", {}) if isinstance(params, Mapping) else {}
  return any(name.startswith(scan.STACK_PREFIXES) for name in encoder)


def check_params(params: Mapping[str, Any], config: ViLBertConfig,
                 architecture: str = "tasks") -> None:
  """Raises ValueError listing every path that is missing, extra or mis-shaped for `config`.

  The layout is `config`'s: stacked layers when `config.scan_layers`.
  """
  expected = {path_keys(path): tuple(leaf.shape) for path, leaf in
              jax.tree_util.tree_flatten_with_path(abstract_params(config, architecture))[0]}
  given = {path_keys(path): tuple(np.shape(leaf))
           for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  problems = [f"{'/'.join(p)}: missing from params" for p in expected if p not in given]
  problems += [f"{'/'.join(p)}: not a parameter of this config" for p in given
               if p not in expected]
  problems += [f"{'/'.join(p)}: shape {given[p]}, but the config needs {expected[p]}"
               for p in given if p in expected and given[p] != expected[p]]
  if problems:
    raise ValueError("params do not match the config:\n  " + "\n  ".join(problems))


def export_official(params: Mapping[str, Any], config: ViLBertConfig | None = None, *,
                    include_unused: bool = True, architecture: str = "tasks"
                    ) -> "collections.OrderedDict[str, np.ndarray]":
  """Our parameters -> an official state dict (official names, PyTorch [out, in] weights).

  Args:
    params: a tree shaped like `init_params` (numpy or jax arrays), in `config`'s layout.
    config: when given, the tree is checked against it first (names and shapes); needed for
      a tree with stacked layers (`scan_layers`), which is unstacked into per-layer names.
    include_unused: also emit `q_dense1/2` and `linguisic_logit` (official init, seeded), so a
      strict `model.load_state_dict` of the official model accepts the result. Importing
      drops them again, so ours -> official -> ours is lossless either way.
    architecture: "tasks" or "pretraining": the model `params` belong to (the pretraining
      model has no `linguisic_logit` to emit).

  Returns:
    OrderedDict name -> numpy array, including `cls.predictions.decoder.weight` (the same array
    object as the word embeddings; see `TIED_ALIASES`).
  """
  if config is not None:
    check_params(params, config, architecture)
    if config.scan_layers:
      params = scan.to_unrolled(params, config)
  elif _has_stacks(params):
    raise ValueError("export_official: the parameters hold stacked layers (scan_layers); pass "
                     "their config so that they can be unstacked into per-layer names")
  flat = [(path_keys(path), leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
  out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
  for path, leaf in flat:
    name, transpose = official_name(path)
    array = np.asarray(jax.device_get(leaf))
    # Transposing only moves values, so the round trip is bitwise exact.
    out[name] = np.ascontiguousarray(array.T) if transpose else array
  if WORD_EMBEDDINGS in out and "cls.predictions.bias" in out:
    out[TIED_DECODER] = out[WORD_EMBEDDINGS]
  if include_unused:
    out.update(_unused_official_params(
        out, config.initializer_range if config is not None else 0.02, architecture))
  return out

