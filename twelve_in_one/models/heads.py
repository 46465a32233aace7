"""Task heads and pretraining heads, as the official `VILBertForVLTasks` and `BertPreTrainingHeads`.

Task heads read the fused vector `pooled = dropout(pooled_t * pooled_v)` (bi_hidden wide),
except `vision_logit`, which reads every visual position.

`SimpleClassifier` is Linear -> GELU -> LayerNorm(eps 1e-12) -> Linear, with parameter names
`logit_fc_0` / `logit_fc_2` / `logit_fc_3` mirroring the reference's `logit_fc.{0,2,3}`
(index 1 is the parameter-free GELU). The reference passes a dropout of 0.5 that it ignores;
there is no dropout inside.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from twelve_in_one.models import layers
from twelve_in_one.models.config import ViLBertConfig


class SimpleClassifier(nn.Module):
  hidden: int
  num_outputs: int
  config: ViLBertConfig
  in_axis: str = "embed_bi"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = layers.compute_dtype(cfg.dtype)
    x = layers.dense(self.hidden, (self.in_axis, "cls_hidden"), name="logit_fc_0", dtype=dtype,
                     init_std=cfg.initializer_range)(x)
    x = layers.LayerNorm("cls_hidden", cfg.layer_norm_eps, name="logit_fc_2")(layers.gelu(x))
    return layers.dense(self.num_outputs, ("cls_hidden", "classes"), name="logit_fc_3",
                        dtype=dtype, init_std=cfg.initializer_range)(x)


class PredictionTransform(nn.Module):
  """`transform`: dense -> GELU -> LayerNorm, before the MLM and region-class decoders."""
  config: ViLBertConfig
  axis: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    x = layers.dense(x.shape[-1], (self.axis, "mlp"), name="dense",
                     dtype=layers.compute_dtype(cfg.dtype), init_std=cfg.initializer_range)(x)
    return layers.LayerNorm("mlp", cfg.layer_norm_eps, name="LayerNorm")(layers.gelu(x))


class MaskedLMHead(nn.Module):
  """`cls.predictions`: the transform, then the decoder tied to the word embeddings + a bias."""
  config: ViLBertConfig

  @nn.compact
  def __call__(self, text: jax.Array, word_embeddings: jax.Array) -> jax.Array:
    cfg = self.config
    hidden = PredictionTransform(cfg, "embed_t", name="transform")(text)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           ("vocab",)),
                      (cfg.vocab_size,), jnp.float32)
    dtype = layers.compute_dtype(cfg.dtype)
    return hidden.astype(dtype) @ word_embeddings.astype(dtype).T + bias.astype(dtype)


class ImagePredictionHead(nn.Module):
  """`cls.imagePredictions`: the transform, then Linear(v_hidden -> v_target_size)."""
  config: ViLBertConfig

  @nn.compact
  def __call__(self, visual: jax.Array) -> jax.Array:
    cfg = self.config
    hidden = PredictionTransform(cfg, "embed_v", name="transform")(visual)
    return layers.dense(cfg.v_target_size, ("mlp", "classes"), name="decoder",
                        dtype=layers.compute_dtype(cfg.dtype),
                        init_std=cfg.initializer_range)(hidden)


class PretrainingHeads(nn.Module):
  """`cls`: masked LM (`predictions`), alignment (`bi_seq_relationship`), region classes.

  No task loss uses them; they exist so that official checkpoints round-trip, and are computed
  only for the outputs asked for.
  """
  config: ViLBertConfig

  @nn.compact
  def __call__(self, wanted: frozenset[str], text: jax.Array, visual: jax.Array,
               pooled: jax.Array, word_embeddings: jax.Array) -> dict[str, jax.Array]:
    cfg = self.config
    out = {}
    if "linguisic_prediction" in wanted:
      out["linguisic_prediction"] = MaskedLMHead(cfg, name="predictions")(text, word_embeddings)
    if "bi_seq_relationship" in wanted:
      out["bi_seq_relationship"] = layers.dense(
          2, ("embed_bi", "classes"), name="bi_seq_relationship",
          dtype=layers.compute_dtype(cfg.dtype), init_std=cfg.initializer_range)(pooled)
    if "vision_prediction" in wanted:
      out["vision_prediction"] = ImagePredictionHead(cfg, name="imagePredictions")(visual)
    return out
