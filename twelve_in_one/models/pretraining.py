"""`ViLBertForPretraining`: the backbone with the pretraining heads only (`bert` + `cls`).

    model = ViLBertForPretraining(config)            # config.task_specific_tokens False
    params = init_pretraining_params(model, jax.random.key(0))
    scores = model.apply({"params": params}, input_ids, image_feat, image_loc,
                         segment_ids=..., input_mask=..., image_mask=...)
    scores["prediction_scores_t"]     # [B, T, vocab]   masked-LM logits
    scores["prediction_scores_v"]     # [B, R, v_target_size]  region-class logits, region 0 too
    scores["seq_relationship_score"]  # [B, 2]          alignment logits (0: the caption fits)

The official `BertForMultiModalPreTraining` (what `train_concap.py` trains and what
`pretrained_model.bin` holds). Its parameter tree is the `bert` and `cls` part of
`ViLBertForVLTasks`'s, under the same names, so a pretrained tree drops into the task model
(missing task heads and task tokens are initialised) and both map to the official names the
same way. The output names are the ones the official forward unpacks them into. The losses
are in `twelve_in_one/pretrain/losses.py`.

Pretraining runs without task tokens, as the official one does (its forward passes none); a
config with `task_specific_tokens` is refused, since the text outputs would then be one longer
than the masked-LM labels.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from twelve_in_one.models import layers
from twelve_in_one.models.config import ViLBertConfig
from twelve_in_one.models.encoder import ViLBertBackbone
from twelve_in_one.models.heads import PretrainingHeads
from twelve_in_one.models.vilbert import PRETRAINING_OUTPUTS, ViLBertForVLTasks, dummy_inputs

# Our output name -> the name the official pretraining forward gives it.
SCORE_NAMES = {"linguisic_prediction": "prediction_scores_t",
               "vision_prediction": "prediction_scores_v",
               "bi_seq_relationship": "seq_relationship_score"}
PRETRAINING_SCORES = tuple(SCORE_NAMES[name] for name in PRETRAINING_OUTPUTS)


def check_pretraining_config(config: ViLBertConfig) -> None:
  """Raises ValueError when `config` cannot build the official pretraining model."""
  if config.task_specific_tokens:
    raise ValueError("ViLBertForPretraining: the config has task_specific_tokens=True; "
                     "pretraining runs without task tokens (set it false)")
  if not config.with_pretraining_heads:
    raise ValueError("ViLBertForPretraining: the config has with_pretraining_heads=False; "
                     "the pretraining model is the backbone plus those heads")


class ViLBertForPretraining(nn.Module):
  """The two-stream ViLBERT with the masked-LM, region-class and alignment heads."""
  config: ViLBertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, image_feat: jax.Array, image_loc: jax.Array,
               segment_ids: jax.Array | None = None, input_mask: jax.Array | None = None,
               image_mask: jax.Array | None = None, *,
               deterministic: bool = True) -> dict[str, jax.Array]:
    """The three score arrays of the official pretraining forward, by its names.

    Args:
      input_ids: [B, T] WordPiece ids, some replaced by [MASK] or random tokens.
      image_feat: [B, R, v_feature_size]; region 0 the global mean region, masked regions
        zeroed.
      image_loc: [B, R, 5] normalised boxes.
      segment_ids, input_mask, image_mask: as in `ViLBertForVLTasks` (defaults: 0, 1, 1).
      deterministic: False turns dropout on; then a `dropout` rng must be given to apply.
    """
    cfg = self.config
    check_pretraining_config(cfg)
    # The task model's shape checks, with no task head asked for.
    ViLBertForVLTasks(cfg, parent=None).validate_inputs(
        input_ids, image_feat, image_loc, segment_ids, input_mask, image_mask, None,
        frozenset())
    segment_ids = jnp.zeros_like(input_ids) if segment_ids is None else segment_ids
    input_mask = jnp.ones_like(input_ids) if input_mask is None else input_mask
    if image_mask is None:
      image_mask = jnp.ones(image_feat.shape[:2], jnp.int32)
    dtype = layers.compute_dtype(cfg.dtype)
    backbone = ViLBertBackbone(cfg, True, True, name="bert")(
        input_ids, segment_ids, input_mask, None, image_feat.astype(dtype),
        image_loc.astype(dtype), image_mask, deterministic)
    pooled_t, pooled_v = backbone["pooled_output_t"], backbone["pooled_output_v"]
    fused = pooled_t * pooled_v if cfg.fusion_method == "mul" else pooled_t + pooled_v
    # `BertPreTrainingHeads` applies its own dropout(0.1) to the fused vector.
    pooled = nn.Dropout(0.1)(fused, deterministic=deterministic)
    word_embeddings = self.get_variable("params", "bert")["embeddings"]["word_embeddings"][
        "embedding"]
    heads = PretrainingHeads(cfg, name="cls")(
        frozenset(PRETRAINING_OUTPUTS), backbone["sequence_output_t"],
        backbone["sequence_output_v"], pooled, nn.meta.unbox(word_embeddings))
    return {SCORE_NAMES[name]: value for name, value in heads.items()}


def init_pretraining_variables(model: ViLBertForPretraining, rng: jax.Array) -> dict:
  """All variables, boxed with their logical axis names, as one compiled program."""
  inputs = dummy_inputs(model.config)
  inputs.pop("task_ids")
  return jax.jit(lambda key: model.init(key, **inputs))(rng)


def init_pretraining_params(model: ViLBertForPretraining, rng: jax.Array) -> dict:
  """Plain (unboxed) float32 parameters, initialised as the reference does."""
  return nn.meta.unbox(init_pretraining_variables(model, rng))["params"]
