"""The co-attention block (`BertConnectionLayer`): each stream attends to the other.

As the official `BertBiAttention`. Index 1 is the visual stream and index 2 the text stream, as in the reference:

* `biattention`: `query1/key1/value1` project the visual states (v_hidden -> bi_hidden),
  `query2/key2/value2` the text states (hidden -> bi_hidden). Text queries attend over visual
  keys/values under the image mask; visual queries attend over text keys/values under the text
  mask. Heads are `bi_num_attention_heads` of width bi_hidden / heads in both directions.
* `biOutput`: `dense1` brings the visual-query context back to v_hidden, then dropout, residual
  with the visual input and `LayerNorm1`; `dense2`/`LayerNorm2` do the same for text.
  The reference also creates `q_dense1`/`q_dense2` and never uses them; we leave them out
  (the converter drops them on import, see `twelve_in_one/interop`).
* Each stream then gets its own FFN: `v_intermediate`/`v_output` and `t_intermediate`/`t_output`.

The reference's `co_attention_mask` is never applied (its code is commented out), so there is
no such input here.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from twelve_in_one.models import layers
from twelve_in_one.models.config import ViLBertConfig
from twelve_in_one.models.transformer import Stream


class BiAttention(nn.Module):
  """Cross attention in both directions; returns (text context, visual context)."""
  config: ViLBertConfig

  @nn.compact
  def __call__(self, visual: jax.Array, visual_mask_bias: jax.Array, text: jax.Array,
               text_mask_bias: jax.Array, deterministic: bool):
    cfg = self.config
    dtype = layers.compute_dtype(cfg.dtype)
    width = cfg.bi_hidden_size

    def proj(name, axis):
      return layers.dense(width, (axis, "qkv"), name=name, dtype=dtype,
                          init_std=cfg.initializer_range)

    query1, key1, value1 = (proj(n, "embed_v")(visual) for n in ("query1", "key1", "value1"))
    query2, key2, value2 = (proj(n, "embed_t")(text) for n in ("query2", "key2", "value2"))

    def dropout(rate):
      if deterministic or rate == 0:
        return None
      return lambda p: nn.Dropout(rate)(p, deterministic=False)

    # Text queries over image keys; probability dropout at the visual attention rate.
    text_context, text_to_image = layers.multi_head_attention(
        query2, key1, value1, visual_mask_bias, num_heads=cfg.bi_num_attention_heads,
        dropout=dropout(cfg.v_attention_probs_dropout_prob), impl=cfg.attention_impl)
    # Image queries over text keys; probability dropout at the text attention rate.
    visual_context, image_to_text = layers.multi_head_attention(
        query1, key2, value2, text_mask_bias, num_heads=cfg.bi_num_attention_heads,
        dropout=dropout(cfg.attention_probs_dropout_prob), impl=cfg.attention_impl)
    # Kept for the co-attention pictures; only stored when `intermediates` is mutable.
    if text_to_image is not None:
      self.sow("intermediates", "text_to_image", text_to_image)
      self.sow("intermediates", "image_to_text", image_to_text)
    return text_context, visual_context


class CoAttentionBlock(nn.Module):
  """One `c_layer`: bi-attention, the two bi-outputs, then each stream's own FFN."""
  config: ViLBertConfig

  @nn.compact
  def __call__(self, visual: jax.Array, visual_mask_bias: jax.Array, text: jax.Array,
               text_mask_bias: jax.Array, deterministic: bool) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    dtype = layers.compute_dtype(cfg.dtype)
    text_stream, visual_stream = Stream.text(cfg), Stream.visual(cfg)
    text_context, visual_context = BiAttention(cfg, name="biattention")(
        visual, visual_mask_bias, text, text_mask_bias, deterministic)

    bi_output = _BiOutput(cfg, name="biOutput")
    visual, text = bi_output(visual_context, visual, text_context, text, deterministic)

    v_inner = layers.Intermediate(visual_stream.mlp_width, ("embed_v", "mlp"), dtype,
                                  cfg.initializer_range, name="v_intermediate")(visual)
    visual = layers.ResidualOutput(visual_stream.width, ("mlp", "embed_v"),
                                   visual_stream.hidden_dropout, dtype, cfg.initializer_range,
                                   cfg.layer_norm_eps, name="v_output")(v_inner, visual,
                                                                        deterministic)
    t_inner = layers.Intermediate(text_stream.mlp_width, ("embed_t", "mlp"), dtype,
                                  cfg.initializer_range, name="t_intermediate")(text)
    text = layers.ResidualOutput(text_stream.width, ("mlp", "embed_t"),
                                 text_stream.hidden_dropout, dtype, cfg.initializer_range,
                                 cfg.layer_norm_eps, name="t_output")(t_inner, text, deterministic)
    visual = layers.constrain(visual, ("batch", "seq_v", "act_embed"))
    text = layers.constrain(text, ("batch", "seq_t", "act_embed"))
    return visual, text


class _BiOutput(nn.Module):
  """`biOutput`: dense1/LayerNorm1 for the visual side, dense2/LayerNorm2 for the text side.

  The reference keeps these four directly under `biOutput` (not in per-side children), so they
  are written out here rather than built from `layers.ResidualOutput`.
  """
  config: ViLBertConfig

  @nn.compact
  def __call__(self, visual_context, visual, text_context, text, deterministic):
    cfg = self.config
    dtype = layers.compute_dtype(cfg.dtype)

    def side(context, residual, width, axis, rate, index):
      out = layers.dense(width, ("qkv", axis), name=f"dense{index}", dtype=dtype,
                         init_std=cfg.initializer_range)(context)
      out = nn.Dropout(rate)(out, deterministic=deterministic)
      return layers.LayerNorm(axis, cfg.layer_norm_eps, name=f"LayerNorm{index}")(out + residual)

    visual = side(visual_context, visual, cfg.v_hidden_size, "embed_v",
                  cfg.v_hidden_dropout_prob, 1)
    text = side(text_context, text, cfg.hidden_size, "embed_t", cfg.hidden_dropout_prob, 2)
    return visual, text
