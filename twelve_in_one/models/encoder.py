"""The two-stream encoder and its poolers: the reference's `BertModel` (parameter prefix `bert`).

Encoder schedule (the official `BertEncoder.forward`), driven by `v_biattention_id` / `t_biattention_id`: for each pair
(v_id, t_id), run the text layers up to t_id, then the visual layers up to v_id, then one
co-attention block; afterwards the remaining visual layers, then the remaining text layers.
For the released 6/6 config that is

    T0..T5 | C0 | T6 V0 | C1 | T7 V1 | C2 | ... | C5 | T11 V5

so the image embedding enters C0 directly and the text has 6 BERT layers of its own first.
With `config.scan_layers` the same schedule runs as scans over stacked layers (`scan.py`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from twelve_in_one.models import layers, scan
from twelve_in_one.models.co_attention import CoAttentionBlock
from twelve_in_one.models.config import ViLBertConfig
from twelve_in_one.models.embeddings import ImageEmbeddings, TextEmbeddings
from twelve_in_one.models.remat import recompute_in_backward
from twelve_in_one.models.transformer import Stream, TransformerLayer


def encoder_schedule(config: ViLBertConfig) -> list[tuple[str, int]]:
  """The order in which the encoder runs its layers, as ("t"|"v"|"c", index) pairs."""
  order: list[tuple[str, int]] = []
  t_start = v_start = 0
  for block, (v_id, t_id) in enumerate(zip(config.v_biattention_id, config.t_biattention_id)):
    order += [("t", i) for i in range(t_start, t_id)]
    order += [("v", i) for i in range(v_start, v_id)]
    order.append(("c", block))
    t_start, v_start = t_id, v_id
  order += [("v", i) for i in range(v_start, config.v_num_hidden_layers)]
  order += [("t", i) for i in range(t_start, config.num_hidden_layers)]
  return order


def pooled_only_layers(config: ViLBertConfig, keep_text_sequence: bool,
                       keep_visual_sequence: bool) -> set[tuple[str, int]]:
  """The schedule entries that need compute only position 0 (see `Encoder`).

  A stream's last layer qualifies when it runs after the last co-attention block (so nothing
  but the stream's own output reads it) and that stream's sequence output is not wanted: the
  pooler reads position 0 only. Earlier layers feed every position of later ones (as keys and
  values), so they always run in full.
  """
  order = encoder_schedule(config)
  last_block = max(i for i, (kind, _) in enumerate(order) if kind == "c")
  pruned = set()
  for stream, keep in (("t", keep_text_sequence), ("v", keep_visual_sequence)):
    positions = [i for i, (kind, _) in enumerate(order) if kind == stream]
    if not keep and positions and positions[-1] > last_block:
      pruned.add(order[positions[-1]])
  return pruned


class Encoder(nn.Module):
  """Text layers `layer_i`, visual layers `v_layer_j` and co-attention blocks `c_layer_k`.

  `keep_text_sequence` / `keep_visual_sequence` False: that stream's output is needed at
  position 0 only (for its pooler), so its last layer computes that position alone
  (`pooled_only_layers`) and its `sequence_output_*` is left out. That spares, for a VQA
  example, the queries, output projections and FFNs of 100 regions and 23 tokens (about 5% of
  the training FLOPs) without changing any value that is computed.
  """
  config: ViLBertConfig
  keep_text_sequence: bool = True
  keep_visual_sequence: bool = True

  @nn.compact
  def __call__(self, text: jax.Array, text_mask: jax.Array, visual: jax.Array,
               visual_mask: jax.Array, deterministic: bool) -> dict[str, jax.Array]:
    cfg = self.config
    text_stream, visual_stream = Stream.text(cfg), Stream.visual(cfg)
    dtype = jnp.promote_types(layers.compute_dtype(cfg.dtype), jnp.float32)
    text_bias = layers.additive_mask(text_mask, dtype)
    visual_bias = layers.additive_mask(visual_mask, dtype)
    extras: dict[str, jax.Array] = {}
    remat_kinds = cfg.remat_kinds

    def run(kind: str, module: nn.Module, *args, deterministic_at: int):
      # `deterministic`, a Python bool, is static in the recomputation. Remat keeps each
      # module's name and parameters.
      if kind in remat_kinds and not self.is_initializing():
        return recompute_in_backward(module, *args, static_argnums=(deterministic_at,))
      return module(*args)

    pruned = pooled_only_layers(cfg, self.keep_text_sequence, self.keep_visual_sequence)
    entries = scan.scan_plan(cfg) if cfg.scan_layers else encoder_schedule(cfg)
    for entry in entries:
      if isinstance(entry, scan.Stack):
        # The pooled-only layers follow the last block, outside every stack (`scan_plan`).
        text, visual = scan.run_stack(entry, cfg, deterministic, text, visual, text_bias,
                                      visual_bias, text_mask)
        continue
      kind, index = entry
      first_only = (kind, index) in pruned
      if kind == "t":
        text = run(kind, TransformerLayer(cfg, text_stream, first_position_only=first_only,
                                          name=f"layer_{index}"), text, text_bias,
                   deterministic, deterministic_at=2)
      elif kind == "v":
        visual = run(kind, TransformerLayer(cfg, visual_stream, cfg.dynamic_attention,
                                            first_position_only=first_only,
                                            name=f"v_layer_{index}"),
                     visual, visual_bias, deterministic, text, text_mask, deterministic_at=2)
      else:
        if index == 0:
          # What enters the first co-attention block: for a BERT-initialised text stream
          # this is exactly BERT's output after `t_biattention_id[0]` layers.
          extras["text_before_coattention"] = text
          extras["visual_before_coattention"] = visual
        visual, text = run(kind, CoAttentionBlock(cfg, name=f"c_layer_{index}"),
                           visual, visual_bias, text, text_bias, deterministic,
                           deterministic_at=4)
    # Position 0 of each stream always (the poolers read it); whole sequences when kept.
    extras["first_position_t"], extras["first_position_v"] = text[:, :1], visual[:, :1]
    if self.keep_text_sequence:
      extras["sequence_output_t"] = text
    if self.keep_visual_sequence:
      extras["sequence_output_v"] = visual
    return extras


class Pooler(nn.Module):
  """Linear on position 0 of a stream, then ReLU (the reference uses ReLU, not tanh)."""
  config: ViLBertConfig
  embed_axis: str

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    cfg = self.config
    first = hidden[:, 0]
    return jax.nn.relu(layers.dense(cfg.bi_hidden_size, (self.embed_axis, "embed_bi"),
                                    name="dense", dtype=layers.compute_dtype(cfg.dtype),
                                    init_std=cfg.initializer_range)(first))


class ViLBertBackbone(nn.Module):
  """Embeddings, encoder and both poolers. Returns every intermediate by name.

  `keep_*_sequence` as in `Encoder`: False leaves that `sequence_output_*` out.
  """
  config: ViLBertConfig
  keep_text_sequence: bool = True
  keep_visual_sequence: bool = True

  @nn.compact
  def __call__(self, input_ids: jax.Array, segment_ids: jax.Array, input_mask: jax.Array,
               task_ids: jax.Array | None, image_feat: jax.Array, image_loc: jax.Array,
               image_mask: jax.Array, deterministic: bool) -> dict[str, jax.Array]:
    cfg = self.config
    text = TextEmbeddings(cfg, name="embeddings")(input_ids, segment_ids, task_ids,
                                                  deterministic)
    if cfg.task_specific_tokens:
      # One "real" column for the task token. The reference prepends it at index 0, which is
      # the same mask because [CLS] is always real.
      input_mask = jnp.concatenate([jnp.ones_like(input_mask[:, :1]), input_mask], axis=1)
    visual = ImageEmbeddings(cfg, name="v_embeddings")(image_feat, image_loc, deterministic)
    outputs = Encoder(cfg, self.keep_text_sequence, self.keep_visual_sequence,
                      name="encoder")(text, input_mask, visual, image_mask, deterministic)
    outputs["embedding_output"] = text
    outputs["v_embedding_output"] = visual
    outputs["pooled_output_t"] = Pooler(cfg, "embed_t", name="t_pooler")(
        outputs.pop("first_position_t"))
    outputs["pooled_output_v"] = Pooler(cfg, "embed_v", name="v_pooler")(
        outputs.pop("first_position_v"))
    outputs["text_mask"] = input_mask
    return outputs
