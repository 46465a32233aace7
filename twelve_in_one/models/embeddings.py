"""Text embeddings with the task token, and region (image) embeddings, as the official model builds them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from twelve_in_one.models import layers
from twelve_in_one.models.config import ViLBertConfig


def _embed(num: int, width: int, axes: tuple[str, str], name: str, std: float) -> nn.Embed:
  return nn.Embed(num, width, param_dtype=jnp.float32, name=name,
                  embedding_init=nn.with_logical_partitioning(nn.initializers.normal(std), axes))


class TextEmbeddings(nn.Module):
  """word + position + token type, then the task token at index 1, then LayerNorm and dropout.

  The task token is inserted after the sum and before LayerNorm and has no position or type
  embedding; the tokens after it keep their original positions 1..T-1. The output therefore has
  T+1 positions when `task_specific_tokens` is on: [CLS], task, token 1, ..., token T-1.
  """
  config: ViLBertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, segment_ids: jax.Array,
               task_ids: jax.Array | None, deterministic: bool) -> jax.Array:
    cfg = self.config
    std = cfg.initializer_range
    seq_len = input_ids.shape[1]
    words = _embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed_t"), "word_embeddings",
                   std)(input_ids)
    positions = _embed(cfg.max_position_embeddings, cfg.hidden_size, ("positions", "embed_t"),
                       "position_embeddings", std)(jnp.arange(seq_len)[None, :])
    types = _embed(cfg.type_vocab_size, cfg.hidden_size, ("types", "embed_t"),
                   "token_type_embeddings", std)(segment_ids)
    embeddings = words + positions + types
    if cfg.task_specific_tokens:
      task = _embed(cfg.num_task_tokens, cfg.hidden_size, ("tasks", "embed_t"),
                    "task_embeddings", std)(task_ids)          # [B, 1, H]
      embeddings = jnp.concatenate([embeddings[:, :1], task, embeddings[:, 1:]], axis=1)
    embeddings = layers.LayerNorm("embed_t", cfg.layer_norm_eps, name="LayerNorm")(embeddings)
    embeddings = nn.Dropout(cfg.hidden_dropout_prob)(embeddings, deterministic=deterministic)
    embeddings = embeddings.astype(layers.compute_dtype(cfg.dtype))
    return layers.constrain(embeddings, ("batch", "seq_t", "act_embed"))


class ImageEmbeddings(nn.Module):
  """LayerNorm(Linear(region features) + Linear(5-d box)), then dropout.

  Regions get no position or type embedding; region 0 is the global (mean) region that the
  feature reader prepends.
  """
  config: ViLBertConfig

  @nn.compact
  def __call__(self, image_feat: jax.Array, image_loc: jax.Array,
               deterministic: bool) -> jax.Array:
    cfg = self.config
    dtype = layers.compute_dtype(cfg.dtype)
    features = layers.dense(cfg.v_hidden_size, ("features", "embed_v"), name="image_embeddings",
                            dtype=dtype, init_std=cfg.initializer_range)(image_feat)
    location = layers.dense(cfg.v_hidden_size, ("box", "embed_v"),
                            name="image_location_embeddings", dtype=dtype,
                            init_std=cfg.initializer_range)(image_loc)
    embeddings = layers.LayerNorm("embed_v", cfg.layer_norm_eps,
                                  name="LayerNorm")(features + location)
    embeddings = nn.Dropout(cfg.v_hidden_dropout_prob)(embeddings, deterministic=deterministic)
    return layers.constrain(embeddings, ("batch", "seq_v", "act_embed"))
