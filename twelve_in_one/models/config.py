"""ViLBERT model configuration: the official JSON format, and the `base` / `tiny` presets.

The field names are the official `BertConfig` keys (MT:config/bert_base_6layer_6conect.json),
so a user's JSON config maps one to one. `ViLBertConfig.from_json` reads that format; keys the
official model never reads are accepted and listed, and flags that change the architecture in a
way we do not implement are rejected with the key named.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

# Keys present in official JSON configs that the official model itself never reads, and
# runtime switches of the official *scripts* that do not change the parameters or the math of
# `VILBertForVLTasks.forward` in the way we run it. The model accepts and ignores them; the
# trainer reads `fixed_t_layer` / `fixed_v_layer` from the JSON itself (train/options.py:
# the layers they name stay out of the optimizer, as in the official training).
IGNORED_OFFICIAL_KEYS = frozenset({
    "bi_intermediate_size", "bi_attention_type", "pooling_method", "v_initializer_range",
    "visual_target", "fast_mode", "in_batch_pairs", "fixed_t_layer", "fixed_v_layer",
    "visualization", "objective", "num_negative", "model", "with_coattention",
})


# The layer kinds `remat` may name, and their entries in the encoder schedule.
REMAT_KINDS = {"text": "t", "visual": "v", "coattention": "c"}


def normalize_remat(value: bool | str) -> str:
  """`remat` as a canonical comma-separated list of layer kinds ("" for none).

  Accepts a bool, "all"/"none", "true"/"false" (as a command-line override of a string field
  gives them), or a comma-separated subset of `REMAT_KINDS`; raises ValueError naming the
  unknown kind otherwise.
  """
  if isinstance(value, bool):
    return ",".join(REMAT_KINDS) if value else ""
  if not isinstance(value, str):
    raise ValueError(f"ViLBertConfig: remat={value!r}; expected a bool or a comma-separated "
                     f"subset of {sorted(REMAT_KINDS)}")
  text = value.strip().lower()
  if text in ("all", "true"):
    return ",".join(REMAT_KINDS)
  if text in ("", "none", "false"):
    return ""
  names = [name.strip() for name in text.split(",") if name.strip()]
  unknown = [name for name in names if name not in REMAT_KINDS]
  if unknown:
    raise ValueError(f"ViLBertConfig: remat={value!r} names unknown layer kind(s) {unknown}; "
                     f"expected 'all', 'none' or a comma-separated subset of "
                     f"{list(REMAT_KINDS)}")
  return ",".join(kind for kind in REMAT_KINDS if kind in names)


@dataclasses.dataclass(frozen=True)
class ViLBertConfig:
  """Hyper-parameters of the two-stream ViLBERT encoder and its heads.

  Widths: `hidden_size` is the text stream, `v_hidden_size` the visual stream and
  `bi_hidden_size` the co-attention projection (also the pooled width).
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  v_feature_size: int = 2048
  v_target_size: int = 1601
  v_hidden_size: int = 1024
  v_num_hidden_layers: int = 6
  v_num_attention_heads: int = 8
  v_intermediate_size: int = 1024
  v_hidden_act: str = "gelu"
  v_hidden_dropout_prob: float = 0.1
  v_attention_probs_dropout_prob: float = 0.1
  bi_hidden_size: int = 1024
  bi_num_attention_heads: int = 8
  v_biattention_id: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
  t_biattention_id: tuple[int, ...] = (6, 7, 8, 9, 10, 11)
  fusion_method: str = "mul"
  task_specific_tokens: bool = True
  dynamic_attention: bool = False
  # Rows of the task-token table. The official code hard-codes 20 for every config.
  num_task_tokens: int = 20
  layer_norm_eps: float = 1e-12
  # Answer-vocabulary sizes are hard-coded in the official heads; kept configurable so a
  # 13th task with another answer space is one number away.
  num_vqa_answers: int = 3129
  num_gqa_answers: int = 1533
  # Build the pretraining heads (masked LM, region classes, alignment) so that official
  # checkpoints round-trip. They are computed only when asked for.
  with_pretraining_heads: bool = True
  # Compute dtype of matmuls ("float32" or "bfloat16"); parameters always stay float32.
  dtype: str = "float32"
  # Attention kernel: "einsum" (the reference math, written out) or "dot_product_attention"
  # (jax.nn.dot_product_attention, which XLA may fuse). Same function, different kernels.
  attention_impl: str = "einsum"
  # Rematerialise layers in the backward pass (`models/remat.py`): only a layer's inputs are
  # kept, and the layer is recomputed once the cotangent from above exists, for one more
  # forward of that layer. Same parameters, the same dropout masks and the same function; an
  # option for large batches. `True` or "all" recomputes every text, visual and co-attention
  # layer (on CPU the step's temporaries fall about fivefold; BENCHMARKS.md); a
  # comma-separated subset of "text", "visual", "coattention" recomputes those kinds only,
  # trading less memory for less recompute and a smaller program (BENCHMARKS.md); `False`,
  # "" or "none" recomputes nothing.
  remat: bool | str = False
  # Run the encoder's layers as `nn.scan`s over stacked parameters (`models/scan.py`): the
  # text layers before the first co-attention block as one scan, the co-attention blocks
  # with their text and visual layers as another, so the compiled step holds one body per
  # kind instead of one per layer. Same function; the parameter tree has a leading `layers`
  # axis on the stacked leaves (interop converts to and from the official per-layer names).
  # Off by default: on the CPU the scanned step compiles faster into a smaller executable,
  # but steps slower with a higher peak (its stacked gradients are live at once;
  # BENCHMARKS.md). The accelerator configs turn it on.
  scan_layers: bool = False

  def __post_init__(self):
    object.__setattr__(self, "v_biattention_id", tuple(int(i) for i in self.v_biattention_id))
    object.__setattr__(self, "t_biattention_id", tuple(int(i) for i in self.t_biattention_id))
    object.__setattr__(self, "remat", normalize_remat(self.remat))
    if not isinstance(self.scan_layers, bool):
      # A command-line override of a bool field may arrive as a string.
      text = str(self.scan_layers).strip().lower()
      if text not in ("true", "false", "1", "0"):
        raise ValueError(f"ViLBertConfig: scan_layers={self.scan_layers!r}; expected a bool")
      object.__setattr__(self, "scan_layers", text in ("true", "1"))
    self.validate()

  def validate(self) -> None:
    """Raises ValueError naming the offending field when the config is inconsistent."""
    def need(cond: bool, msg: str):
      if not cond:
        raise ValueError(f"ViLBertConfig: {msg}")
    for width, heads, name in ((self.hidden_size, self.num_attention_heads, "hidden_size"),
                               (self.v_hidden_size, self.v_num_attention_heads, "v_hidden_size"),
                               (self.bi_hidden_size, self.bi_num_attention_heads,
                                "bi_hidden_size")):
      need(heads > 0 and width % heads == 0,
           f"{name}={width} is not divisible by its number of attention heads ({heads})")
    need(len(self.v_biattention_id) == len(self.t_biattention_id),
         f"v_biattention_id {list(self.v_biattention_id)} and t_biattention_id "
         f"{list(self.t_biattention_id)} must have the same length (one pair per co-attention "
         "block)")
    need(list(self.t_biattention_id) == sorted(self.t_biattention_id) and
         all(0 <= i <= self.num_hidden_layers for i in self.t_biattention_id),
         f"t_biattention_id {list(self.t_biattention_id)} must be non-decreasing and within "
         f"[0, num_hidden_layers={self.num_hidden_layers}]")
    need(list(self.v_biattention_id) == sorted(self.v_biattention_id) and
         all(0 <= i <= self.v_num_hidden_layers for i in self.v_biattention_id),
         f"v_biattention_id {list(self.v_biattention_id)} must be non-decreasing and within "
         f"[0, v_num_hidden_layers={self.v_num_hidden_layers}]")
    need(self.hidden_act == "gelu" and self.v_hidden_act == "gelu",
         f"hidden_act={self.hidden_act!r}, v_hidden_act={self.v_hidden_act!r}: only the "
         "official 'gelu' (exact erf form) is supported")
    need(self.fusion_method in ("mul", "sum"),
         f"fusion_method={self.fusion_method!r}; expected 'mul' or 'sum'")
    need(self.dtype in ("float32", "bfloat16", "float16", "float64"),
         f"dtype={self.dtype!r}; expected float32, bfloat16, float16 or float64")
    need(self.attention_impl in ("einsum", "dot_product_attention"),
         f"attention_impl={self.attention_impl!r}; expected 'einsum' or "
         "'dot_product_attention'")

  @property
  def remat_kinds(self) -> frozenset[str]:
    """The encoder entry kinds ("t", "v", "c"; see `encoder_schedule`) that are recomputed."""
    return frozenset(REMAT_KINDS[name] for name in self.remat.split(",") if name)

  @property
  def num_co_attention_blocks(self) -> int:
    return len(self.v_biattention_id)

  def replace(self, **changes: Any) -> "ViLBertConfig":
    return dataclasses.replace(self, **changes)

  # ---------------------------------------------------------------- official JSON format
  @classmethod
  def from_official_dict(cls, values: Mapping[str, Any], *, source: str = "<dict>",
                         **overrides: Any) -> "ViLBertConfig":
    """Builds a config from the official `BertConfig` key/values.

    Like the official `BertConfig.from_json_file`, keys absent from the file keep the
    constructor defaults; except `task_specific_tokens`, which defaults to True here because
    every 12-in-1 model uses task tokens (the official default False is flipped by the
    `--task_specific_tokens` flag of every README command).
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    unknown = []
    for key, value in values.items():
      if key in fields:
        kwargs[key] = value
      elif key in IGNORED_OFFICIAL_KEYS:
        continue
      else:
        unknown.append(key)
    if unknown:
      raise ValueError(f"{source}: unknown config key(s) {sorted(unknown)}; expected keys of "
                       "the official BertConfig")
    if values.get("model", "bert") != "bert":
      raise ValueError(f"{source}: model={values['model']!r}; only the BERT text stream "
                       "('bert') is supported")
    if values.get("with_coattention", True) is not True:
      raise ValueError(f"{source}: with_coattention={values['with_coattention']!r}; the "
                       "12-in-1 model always uses co-attention")
    kwargs.update(overrides)
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path: str | os.PathLike, **overrides: Any) -> "ViLBertConfig":
    """Reads an official JSON config file (e.g. `bert_base_6layer_6conect.json`)."""
    try:
      with open(path) as f:
        values = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
      raise ValueError(f"{path}: expected a JSON object of config keys, got "
                       f"{type(values).__name__}")
    return cls.from_official_dict(values, source=str(path), **overrides)

  def to_official_dict(self) -> dict[str, Any]:
    """The official JSON keys, so exported checkpoints can be loaded by the official code."""
    out = dataclasses.asdict(self)
    for key in ("num_task_tokens", "layer_norm_eps", "num_vqa_answers", "num_gqa_answers",
                "with_pretraining_heads", "dtype", "attention_impl", "remat",
                "scan_layers"):
      out.pop(key)
    out["v_biattention_id"] = list(self.v_biattention_id)
    out["t_biattention_id"] = list(self.t_biattention_id)
    out["bi_intermediate_size"] = self.v_intermediate_size
    out["bi_attention_type"] = 1
    out["pooling_method"] = self.fusion_method
    out["v_initializer_range"] = self.initializer_range
    return out


def base_config(**overrides: Any) -> ViLBertConfig:
  """The official `bert_base_6layer_6conect` model (about 270M parameters)."""
  return ViLBertConfig(**overrides)


def tiny_config(**overrides: Any) -> ViLBertConfig:
  """A model of the real structure, small enough for unit tests on a laptop CPU.

  Non-consecutive co-attention ids, as in the released config, so the encoder schedule is
  exercised; the answer heads keep their real sizes so output shapes are the official ones.

  The text stream is 48 wide, not narrower, for XLA:CPU's sake: it fuses a narrow LayerNorm
  (measured: 30 wide still, 36 no longer) into the LayerNorm's consumers, so the whole
  residual stream, from the embeddings on, is recomputed inside each backward fusion. At 24
  wide that made the training step's HLO several times larger and its compile several times
  slower (BENCHMARKS.md, "Test suite").
  """
  values = dict(vocab_size=1000, hidden_size=48, num_hidden_layers=5, num_attention_heads=3,
                intermediate_size=40, max_position_embeddings=512, v_hidden_size=40,
                v_num_hidden_layers=3, v_num_attention_heads=2, v_intermediate_size=56,
                bi_hidden_size=18, bi_num_attention_heads=3, v_biattention_id=(0, 2),
                t_biattention_id=(2, 4))
  values.update(overrides)
  return ViLBertConfig(**values)


def small_config(**overrides: Any) -> ViLBertConfig:
  """A CPU-trainable model for the embedded benchmark (a few minutes per run on 2 cores)."""
  values = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=256, max_position_embeddings=512, v_hidden_size=128,
                v_num_hidden_layers=2, v_num_attention_heads=4, v_intermediate_size=256,
                bi_hidden_size=128, bi_num_attention_heads=4, v_biattention_id=(0, 1),
                t_biattention_id=(2, 4))
  values.update(overrides)
  return ViLBertConfig(**values)


PRESETS = {"base": base_config, "tiny": tiny_config, "small": small_config}


def get_model_config(name_or_path: str, **overrides: Any) -> ViLBertConfig:
  """A preset name (`base`, `tiny`, `small`) or a path to an official JSON config."""
  if name_or_path in PRESETS:
    return PRESETS[name_or_path](**overrides)
  if name_or_path.endswith(".json"):
    return ViLBertConfig.from_json(name_or_path, **overrides)
  raise ValueError(f"unknown model config {name_or_path!r}; expected one of "
                   f"{sorted(PRESETS)} or a path to an official JSON config")

