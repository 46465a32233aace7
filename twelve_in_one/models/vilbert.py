"""`ViLBertForVLTasks`: the 12-in-1 model, a pure function of (params, inputs, task ids).

    model = ViLBertForVLTasks(tiny_config())
    params = init_params(model, jax.random.key(0))
    out = model.apply({"params": params}, input_ids, image_feat, image_loc,
                      segment_ids=..., input_mask=..., image_mask=..., task_ids=1,
                      outputs=("vil_prediction",))
    out["vil_prediction"]          # [B, 3129]

Only the outputs asked for are computed (the reference computes all ten on every forward).
Names and shapes are the official model's:

| output | shape | head |
|---|---|---|
| vil_prediction | [B, 3129] | SimpleClassifier on pooled (VQA, VG-QA) |
| vil_prediction_gqa | [B, 1533] | SimpleClassifier on pooled (GQA) |
| vil_logit | [B, 1] | Linear on pooled (retrieval) |
| vil_binary_prediction | [B/2, 2] | SimpleClassifier on rows 2i, 2i+1 concatenated (NLVR2) |
| vil_tri_prediction | [B, 3] | Linear on pooled (SNLI-VE) |
| vision_logit | [B, R, 1] | Linear on every region, -10000 on padding (grounding) |
| linguisic_prediction | [B, T+1, vocab] | masked-LM head (pretraining) |
| vision_prediction | [B, R, 1601] | region-class head (pretraining) |
| bi_seq_relationship | [B, 2] | alignment head (pretraining) |

plus the backbone intermediates listed in `BACKBONE_OUTPUTS`.

`vil_binary_prediction` on an odd batch: the reference silently returns the *alignment* head
`cls.bi_seq_relationship(pooled)` of shape [B, 2] instead, which is a different function. We
do not reproduce that: an odd batch is an error here, and `bi_seq_relationship` is the output
to ask for if that value is wanted (the parity tool maps it so; see `interop/parity.py`).
"""

from __future__ import annotations

from typing import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from twelve_in_one.models import layers
from twelve_in_one.models.config import ViLBertConfig
from twelve_in_one.models.encoder import ViLBertBackbone
from twelve_in_one.models.heads import PretrainingHeads, SimpleClassifier

TASK_OUTPUTS = ("vil_prediction", "vil_prediction_gqa", "vil_logit", "vil_binary_prediction",
                "vil_tri_prediction", "vision_logit")
PRETRAINING_OUTPUTS = ("linguisic_prediction", "vision_prediction", "bi_seq_relationship")
BACKBONE_OUTPUTS = ("embedding_output", "v_embedding_output", "sequence_output_t",
                    "sequence_output_v", "pooled_output_t", "pooled_output_v", "pooled",
                    "text_before_coattention", "visual_before_coattention")
ALL_OUTPUTS = TASK_OUTPUTS + PRETRAINING_OUTPUTS + BACKBONE_OUTPUTS
# The outputs that read every position of a stream's last layer; without any of them, that
# layer computes position 0 only (`encoder.pooled_only_layers`).
TEXT_SEQUENCE_OUTPUTS = frozenset({"sequence_output_t", "linguisic_prediction"})
VISUAL_SEQUENCE_OUTPUTS = frozenset({"sequence_output_v", "vision_logit", "vision_prediction"})


def _check_shape(name: str, array, expected: tuple, meaning: str) -> None:
  """Raises ValueError naming the array when its shape differs (None matches any size)."""
  shape = tuple(np.shape(array))
  if len(shape) != len(expected) or any(e is not None and s != e
                                        for s, e in zip(shape, expected)):
    pretty = "[" + ", ".join("?" if e is None else str(e) for e in expected) + "]"
    raise ValueError(f"{name}: expected shape {pretty} ({meaning}), got {list(shape)}")


class ViLBertForVLTasks(nn.Module):
  """The two-stream ViLBERT with every 12-in-1 task head (and the pretraining heads)."""
  config: ViLBertConfig

  def validate_inputs(self, input_ids, image_feat, image_loc, segment_ids, input_mask,
                      image_mask, task_ids, wanted: frozenset[str]) -> None:
    """Checks shapes at trace time and raises errors that name the array and the shape."""
    cfg = self.config
    unknown = sorted(wanted - set(ALL_OUTPUTS))
    if unknown:
      raise ValueError(f"unknown output(s) {unknown}; expected names from {list(ALL_OUTPUTS)}")
    _check_shape("input_ids", input_ids, (None, None), "batch, text tokens")
    batch, seq_len = np.shape(input_ids)
    if seq_len > cfg.max_position_embeddings:
      raise ValueError(f"input_ids: {seq_len} text tokens, longer than the position table "
                       f"(max_position_embeddings={cfg.max_position_embeddings})")
    _check_shape("image_feat", image_feat, (batch, None, cfg.v_feature_size),
                 f"batch, regions, v_feature_size={cfg.v_feature_size}")
    num_regions = np.shape(image_feat)[1]
    _check_shape("image_loc", image_loc, (batch, num_regions, 5),
                 "batch, regions, 5-d box [x1, y1, x2, y2, area]")
    for name, value, expected in (("segment_ids", segment_ids, (batch, seq_len)),
                                  ("input_mask", input_mask, (batch, seq_len)),
                                  ("image_mask", image_mask, (batch, num_regions))):
      if value is not None:
        _check_shape(name, value, expected, "same batch and length as its stream")
    if cfg.task_specific_tokens:
      if task_ids is None:
        raise ValueError("task_ids: required because the config has task_specific_tokens=True "
                         "(an int, or an array of shape [B] or [B, 1])")
      if np.ndim(task_ids) and np.shape(task_ids) not in ((batch,), (batch, 1)):
        raise ValueError(f"task_ids: expected an int or shape [{batch}] or [{batch}, 1], got "
                         f"{list(np.shape(task_ids))}")
      if not isinstance(task_ids, jax.core.Tracer):
        ids = np.asarray(task_ids)
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.num_task_tokens):
          raise ValueError(f"task_ids: values must be in [0, {cfg.num_task_tokens}) (the "
                           f"task-token table), got {sorted(set(ids.ravel().tolist()))}")
    if "vil_binary_prediction" in wanted and batch % 2:
      raise ValueError(f"vil_binary_prediction: needs an even batch (rows 2i and 2i+1 are one "
                       f"NLVR2 statement with its two images), got batch {batch}")

  @nn.compact
  def __call__(self, input_ids: jax.Array, image_feat: jax.Array, image_loc: jax.Array,
               segment_ids: jax.Array | None = None, input_mask: jax.Array | None = None,
               image_mask: jax.Array | None = None, task_ids=None, *,
               outputs: Iterable[str] = ("vil_prediction",),
               deterministic: bool = True) -> dict[str, jax.Array]:
    """Runs the model and returns the requested outputs by name.

    Args:
      input_ids: [B, T] WordPiece ids, [CLS] ... [SEP] then 0 padding.
      image_feat: [B, R, v_feature_size] region features, region 0 the global mean region.
      image_loc: [B, R, 5] normalised boxes [x1, y1, x2, y2, area].
      segment_ids: [B, T] token types (default 0).
      input_mask: [B, T] 1 for real tokens (default all 1).
      image_mask: [B, R] 1 for real regions (default all 1).
      task_ids: official task ids (TASKn -> n): an int, or [B] / [B, 1] per sample.
      outputs: names from `ALL_OUTPUTS`; only what they need is computed.
      deterministic: False turns dropout on; then a `dropout` rng must be given to apply.
    """
    cfg = self.config
    wanted = frozenset(outputs)
    self.validate_inputs(input_ids, image_feat, image_loc, segment_ids, input_mask, image_mask,
                         task_ids, wanted)
    batch = input_ids.shape[0]
    segment_ids = jnp.zeros_like(input_ids) if segment_ids is None else segment_ids
    input_mask = jnp.ones_like(input_ids) if input_mask is None else input_mask
    if image_mask is None:
      image_mask = jnp.ones(image_feat.shape[:2], jnp.int32)
    if cfg.task_specific_tokens:
      task_ids = jnp.broadcast_to(jnp.asarray(task_ids, jnp.int32).reshape(-1, 1), (batch, 1))
    image_feat = image_feat.astype(layers.compute_dtype(cfg.dtype))
    image_loc = image_loc.astype(layers.compute_dtype(cfg.dtype))

    backbone = ViLBertBackbone(cfg, bool(wanted & TEXT_SEQUENCE_OUTPUTS),
                               bool(wanted & VISUAL_SEQUENCE_OUTPUTS),
                               name="bert")(input_ids, segment_ids, input_mask, task_ids,
                                                 image_feat, image_loc, image_mask,
                                                 deterministic)
    pooled_t, pooled_v = backbone["pooled_output_t"], backbone["pooled_output_v"]
    fused = pooled_t * pooled_v if cfg.fusion_method == "mul" else pooled_t + pooled_v
    pooled = nn.Dropout(0.1)(fused, deterministic=deterministic)
    result = {name: backbone[name] for name in BACKBONE_OUTPUTS if name in wanted and
              name in backbone}
    if "pooled" in wanted:
      result["pooled"] = pooled

    dtype = layers.compute_dtype(cfg.dtype)
    head = lambda n, name: layers.dense(n, ("embed_bi", "classes"), name=name, dtype=dtype,
                                        init_std=cfg.initializer_range)
    if "vil_prediction" in wanted:
      result["vil_prediction"] = SimpleClassifier(
          2 * cfg.bi_hidden_size, cfg.num_vqa_answers, cfg, name="vil_prediction")(pooled)
    if "vil_prediction_gqa" in wanted:
      result["vil_prediction_gqa"] = SimpleClassifier(
          2 * cfg.bi_hidden_size, cfg.num_gqa_answers, cfg, name="vil_prediction_gqa")(pooled)
    if "vil_binary_prediction" in wanted:
      pairs = pooled.reshape(batch // 2, 2 * cfg.bi_hidden_size)
      result["vil_binary_prediction"] = SimpleClassifier(
          2 * cfg.bi_hidden_size, 2, cfg, in_axis="embed_bi",
          name="vil_binary_prediction")(pairs)
    if "vil_logit" in wanted:
      result["vil_logit"] = head(1, "vil_logit")(pooled)
    if "vil_tri_prediction" in wanted:
      result["vil_tri_prediction"] = head(3, "vil_tri_prediction")(pooled)
    if "vision_logit" in wanted:
      visual = nn.Dropout(0.1)(backbone["sequence_output_v"], deterministic=deterministic)
      logits = layers.dense(1, ("embed_v", "classes"), name="vision_logit", dtype=dtype,
                            init_std=cfg.initializer_range)(visual)
      padding = (1.0 - image_mask.astype(logits.dtype)) * layers.MASK_VALUE
      result["vision_logit"] = logits + padding[..., None]

    pretraining = wanted & set(PRETRAINING_OUTPUTS)
    if pretraining:
      if not cfg.with_pretraining_heads:
        raise ValueError(f"outputs {sorted(pretraining)} need the pretraining heads, but the "
                         "config has with_pretraining_heads=False")
      word_embeddings = self.get_variable("params", "bert")["embeddings"]["word_embeddings"][
          "embedding"]
      result.update(PretrainingHeads(cfg, name="cls")(
          pretraining, backbone["sequence_output_t"], backbone["sequence_output_v"], pooled,
          nn.meta.unbox(word_embeddings)))
    return result


def all_outputs(config: ViLBertConfig) -> tuple[str, ...]:
  """Every head the config builds: what `init` must touch so every parameter exists."""
  return TASK_OUTPUTS + (PRETRAINING_OUTPUTS if config.with_pretraining_heads else ())


def dummy_inputs(config: ViLBertConfig, batch: int = 2, seq_len: int = 4,
                 num_regions: int = 3) -> dict[str, np.ndarray]:
  """Small inputs of the right structure (used for init and shape inference)."""
  return dict(input_ids=np.zeros((batch, seq_len), np.int32),
              image_feat=np.zeros((batch, num_regions, config.v_feature_size), np.float32),
              image_loc=np.zeros((batch, num_regions, 5), np.float32),
              segment_ids=np.zeros((batch, seq_len), np.int32),
              input_mask=np.ones((batch, seq_len), np.int32),
              image_mask=np.ones((batch, num_regions), np.int32),
              task_ids=np.ones((batch, 1), np.int32) if config.task_specific_tokens else None)


def init_variables(model: ViLBertForVLTasks, rng: jax.Array) -> dict:
  """All variables, boxed with their logical axis names (`nn.LogicallyPartitioned`).

  Compiled as one program: run eagerly, every initialiser would be dispatched (and compiled)
  op by op, which takes tens of seconds even for the tiny model.
  """
  inputs = dummy_inputs(model.config)
  outputs = all_outputs(model.config)
  return jax.jit(lambda key: model.init(key, **inputs, outputs=outputs))(rng)


def init_params(model: ViLBertForVLTasks, rng: jax.Array) -> dict:
  """Plain (unboxed) float32 parameters, initialised as the reference does."""
  return nn.meta.unbox(init_variables(model, rng))["params"]


def logical_param_specs(model: ViLBertForVLTasks) -> dict:
  """The logical PartitionSpec of every parameter, computed without allocating."""
  abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
  return nn.get_partition_spec(abstract)["params"]
