"""The single-stream transformer layer, used by the text stream and by the visual stream.

The reference's `BertLayer` (text, width 768) and `BertImageLayer` (visual, width 1024) have the
same post-LN structure; only the widths and dropout rates differ, which `Stream` carries.
Parameter names mirror the reference module tree:

    attention/self/{query,key,value}   attention/output/{dense,LayerNorm}
    intermediate/dense                 output/{dense,LayerNorm}
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from twelve_in_one.models import layers
from twelve_in_one.models.config import ViLBertConfig


@dataclasses.dataclass(frozen=True)
class Stream:
  """Widths, rates and logical axis names of one stream."""
  width: int
  num_heads: int
  mlp_width: int
  hidden_dropout: float
  attention_dropout: float
  embed_axis: str   # logical name of the stream's hidden axis
  seq_axis: str     # logical name of its sequence axis (activations)

  @classmethod
  def text(cls, config: ViLBertConfig) -> "Stream":
    return cls(config.hidden_size, config.num_attention_heads, config.intermediate_size,
               config.hidden_dropout_prob, config.attention_probs_dropout_prob,
               "embed_t", "seq_t")

  @classmethod
  def visual(cls, config: ViLBertConfig) -> "Stream":
    return cls(config.v_hidden_size, config.v_num_attention_heads, config.v_intermediate_size,
               config.v_hidden_dropout_prob, config.v_attention_probs_dropout_prob,
               "embed_v", "seq_v")


class SelfAttention(nn.Module):
  """Multi-head self-attention projections and kernel (`attention.self`).

  With `dynamic_attention` (visual stream only, off in every released model), the visual
  queries and keys are gated by `1 + sigmoid(Linear(masked mean of the text states))`.
  """
  config: ViLBertConfig
  stream: Stream
  dynamic: bool = False

  @nn.compact
  def __call__(self, hidden: jax.Array, mask_bias: jax.Array, deterministic: bool,
               text_hidden: jax.Array | None = None, text_mask: jax.Array | None = None,
               num_queries: int | None = None) -> jax.Array:
    """Attends from the first `num_queries` positions (all when None) over every position."""
    cfg, stream = self.config, self.stream
    dtype = layers.compute_dtype(cfg.dtype)
    axes = (stream.embed_axis, "qkv")
    proj = lambda name: layers.dense(stream.width, axes, name=name, dtype=dtype,
                                     init_std=cfg.initializer_range)
    queries = hidden if num_queries is None else hidden[:, :num_queries]
    query, key, value = proj("query")(queries), proj("key")(hidden), proj("value")(hidden)
    if self.dynamic:
      mask = text_mask.astype(text_hidden.dtype)[..., None]
      pooled = (text_hidden * mask).sum(1) / mask.sum(1)
      gate = lambda name: 1.0 + jax.nn.sigmoid(layers.dense(
          stream.width, ("embed_t", "qkv"), name=name, dtype=dtype,
          init_std=cfg.initializer_range)(pooled))[:, None, :]
      query = query * gate("dyLinear_q")
      key = key * gate("dyLinear_k")
    dropout = None
    if not deterministic and stream.attention_dropout > 0:
      dropout = lambda p: nn.Dropout(stream.attention_dropout)(p, deterministic=False)
    context, _ = layers.multi_head_attention(query, key, value, mask_bias,
                                             num_heads=stream.num_heads, dropout=dropout,
                                             impl=cfg.attention_impl)
    return layers.constrain(context, ("batch", stream.seq_axis, "act_qkv"))


class Attention(nn.Module):
  """`attention` = self-attention + its output projection, residual and LayerNorm."""
  config: ViLBertConfig
  stream: Stream
  dynamic: bool = False

  @nn.compact
  def __call__(self, hidden, mask_bias, deterministic, text_hidden=None, text_mask=None,
               num_queries=None):
    cfg, stream = self.config, self.stream
    context = SelfAttention(cfg, stream, self.dynamic, name="self")(
        hidden, mask_bias, deterministic, text_hidden, text_mask, num_queries)
    residual = hidden if num_queries is None else hidden[:, :num_queries]
    return layers.ResidualOutput(stream.width, ("qkv", stream.embed_axis),
                                 stream.hidden_dropout, layers.compute_dtype(cfg.dtype),
                                 cfg.initializer_range, cfg.layer_norm_eps,
                                 name="output")(context, residual, deterministic)


class TransformerLayer(nn.Module):
  """One post-LN transformer layer of either stream (`BertLayer` / `BertImageLayer`).

  With `first_position_only` the layer computes its output at position 0 alone, attending over
  every position: the same values there, returned as [B, 1, W]. The encoder asks for it in a
  stream's last layer when only the pooler (position 0) reads that layer's output.
  """
  config: ViLBertConfig
  stream: Stream
  dynamic: bool = False
  first_position_only: bool = False

  @nn.compact
  def __call__(self, hidden: jax.Array, mask_bias: jax.Array, deterministic: bool,
               text_hidden: jax.Array | None = None,
               text_mask: jax.Array | None = None) -> jax.Array:
    cfg, stream = self.config, self.stream
    dtype = layers.compute_dtype(cfg.dtype)
    attended = Attention(cfg, stream, self.dynamic, name="attention")(
        hidden, mask_bias, deterministic, text_hidden, text_mask,
        1 if self.first_position_only else None)
    inner = layers.Intermediate(stream.mlp_width, (stream.embed_axis, "mlp"), dtype,
                                cfg.initializer_range, name="intermediate")(attended)
    inner = layers.constrain(inner, ("batch", stream.seq_axis, "act_mlp"))
    out = layers.ResidualOutput(stream.width, ("mlp", stream.embed_axis), stream.hidden_dropout,
                                dtype, cfg.initializer_range, cfg.layer_norm_eps,
                                name="output")(inner, attended, deterministic)
    return layers.constrain(out, ("batch", stream.seq_axis, "act_embed"))
