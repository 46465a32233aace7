"""The pretraining objective of `BertForMultiModalPreTraining` and `train_concap.py`.

    loss, aux = pretraining_loss(ViLBertForPretraining(config).apply, params, batch,
                                 objective=1, img_weight=1.0)

A batch carries, with B samples, T tokens and R regions (region 0 the global mean region):

| key | shape | meaning |
|---|---|---|
| input_ids, token_type_ids, attention_mask | [B, T] | tokens after masking |
| image_feat, image_loc, image_mask | [B, R, F], [B, R, 5], [B, R] | regions after masking |
| masked_lm_labels | [B, T] | the original id of each masked token; -1 where nothing is predicted |
| image_label | [B, R-1] | 1 for a masked region, -1 otherwise; entry r is region r+1 |
| image_target_kl | [B, R-1, v_target_size] | the detector's class distribution of region r+1 |
| next_sentence_label | [B] | 0: the caption belongs to the image; 1: a random other caption |

The losses, as the official code computes them (`visual_target` 0, the 12-in-1 setting):

* `masked_lm_loss`: cross-entropy of `prediction_scores_t` against `masked_lm_labels`, mean over
  the predicted tokens (negative labels are not predicted; the official ignore index is -1).
* `masked_img_loss`: KL(target || softmax(`prediction_scores_v`)) on regions 1..R-1, summed over
  the classes and over the regions whose `image_label` is 1, divided by the number of such
  regions.
* `next_sentence_loss`: cross-entropy of `seq_relationship_score` against `next_sentence_label`.
* `loss = masked_lm_loss + img_weight * masked_img_loss + next_sentence_loss`.

`objective` is `train_concap.py`'s `--objective`: 0 keeps every label; 1 (the README's
pretraining command) drops the masked-token and masked-region labels of misaligned pairs
(`next_sentence_label` != 0) before the forward, so only aligned pairs train the masking losses;
2 multiplies the alignment loss by zero.

Deliberate difference: the official masked-region loss divides by `max(count, 0)` and torch's
cross-entropy averages over the non-ignored labels, so a batch with no masked region (or no
masked token) gives 0 / 0 = NaN, and the NaN reaches every parameter through the sum. Here
every mean divides by `max(count, 1)`: a loss with nothing to predict is 0, with zero gradient,
and the other losses train as usual. Whenever something is masked the values are the official
ones. Under objective 1 a batch of misaligned pairs only has nothing to predict by design.

The means run over the whole batch given; the official multi-GPU run (`DataParallel`) averages
per-GPU means instead, which weights each GPU's share equally rather than each label.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

OBJECTIVES = (0, 1, 2)
# Batch key -> the keyword argument of `ViLBertForPretraining`.
MODEL_INPUTS = {"input_ids": "input_ids", "token_type_ids": "segment_ids",
                "attention_mask": "input_mask", "image_feat": "image_feat",
                "image_loc": "image_loc", "image_mask": "image_mask"}
LABELS = ("masked_lm_labels", "image_label", "image_target_kl", "next_sentence_label")


def _loss_dtype(array: jax.Array) -> jnp.dtype:
  """At least float32 (logits may be bfloat16); float64 stays float64."""
  return jnp.promote_types(array.dtype, jnp.float32)


def _safe_mean(total: jax.Array, count: jax.Array) -> jax.Array:
  """total / count, and 0 when count is 0 (see the module docstring)."""
  return total / jnp.maximum(count, 1).astype(total.dtype)


def cross_entropy_ignoring_negative(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy over the entries whose label is >= 0; logits [..., C], labels [...]."""
  logits = logits.astype(_loss_dtype(logits))
  predicted = labels >= 0
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.where(predicted, labels, 0)[..., None].astype(
      jnp.int32), axis=-1)[..., 0]
  return _safe_mean(-jnp.sum(jnp.where(predicted, picked, 0.0)), jnp.sum(predicted))


def masked_lm_loss(prediction_scores_t: jax.Array, masked_lm_labels: jax.Array) -> jax.Array:
  """Masked-LM cross-entropy: [B, T, vocab] logits, [B, T] labels (-1: not predicted)."""
  return cross_entropy_ignoring_negative(prediction_scores_t, masked_lm_labels)


def masked_region_kl_loss(prediction_scores_v: jax.Array, image_target_kl: jax.Array,
                          image_label: jax.Array) -> jax.Array:
  """KL from the detector's class distribution, on the masked regions 1..R-1.

  Args:
    prediction_scores_v: [B, R, C] region-class logits, region 0 included (and skipped here).
    image_target_kl: [B, R-1, C] target distributions of regions 1..R-1.
    image_label: [B, R-1]; regions with label 1 count.
  """
  logits = prediction_scores_v[:, 1:].astype(_loss_dtype(prediction_scores_v))
  target = image_target_kl.astype(logits.dtype)
  # torch's KLDivLoss on log-probabilities: target * (log target - input), 0 where target is 0.
  divergence = jnp.sum(xlogy(target, target) - target * jax.nn.log_softmax(logits, axis=-1),
                       axis=-1)
  masked = image_label == 1
  return _safe_mean(jnp.sum(jnp.where(masked, divergence, 0.0)), jnp.sum(masked))


def alignment_loss(seq_relationship_score: jax.Array,
                   next_sentence_label: jax.Array) -> jax.Array:
  """Image-caption alignment cross-entropy: [B, 2] logits, [B] labels (0: aligned)."""
  return cross_entropy_ignoring_negative(seq_relationship_score, next_sentence_label)


def apply_objective(batch: Mapping[str, jax.Array], objective: int) -> dict[str, jax.Array]:
  """The labels as `train_concap.py` feeds them to the model under `--objective`.

  Objective 1 sets the token and region labels of misaligned pairs to -1. As the official
  code does it (multiply by "aligned", then map 0 to -1), a token label of 0 ([PAD]) on an
  aligned pair is dropped too; no masking pipeline predicts [PAD].
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective={objective!r}; expected one of {list(OBJECTIVES)} (0: every "
                     "label, 1: no masking losses on misaligned pairs, 2: no alignment loss)")
  labels = {key: batch[key] for key in LABELS}
  if objective == 1:
    aligned = (batch["next_sentence_label"] == 0)[:, None]
    labels["image_label"] = jnp.where(aligned, batch["image_label"], -1)
    tokens = jnp.where(aligned, batch["masked_lm_labels"], -1)
    labels["masked_lm_labels"] = jnp.where(tokens == 0, -1, tokens)
  return labels


def check_batch(batch: Mapping[str, Any], v_target_size: int | None = None) -> None:
  """Raises ValueError naming the key when a batch lacks a key or has a wrong shape."""
  missing = [key for key in (*MODEL_INPUTS, *LABELS) if key not in batch]
  if missing:
    raise ValueError(f"pretraining batch: missing key(s) {missing}; expected "
                     f"{list(MODEL_INPUTS) + list(LABELS)}")
  batch_size, seq_len = np.shape(batch["input_ids"])
  num_regions = np.shape(batch["image_feat"])[1]
  expected = {"masked_lm_labels": (batch_size, seq_len),
              "image_label": (batch_size, num_regions - 1),
              "next_sentence_label": (batch_size,)}
  target_shape = (batch_size, num_regions - 1) + (
      (v_target_size,) if v_target_size is not None else tuple(np.shape(
          batch["image_target_kl"])[2:3]))
  expected["image_target_kl"] = target_shape
  for key, shape in expected.items():
    if tuple(np.shape(batch[key])) != shape:
      raise ValueError(f"pretraining batch: {key} has shape {list(np.shape(batch[key]))}, "
                       f"expected {list(shape)} (batch {batch_size}, {seq_len} tokens, "
                       f"{num_regions} regions with region 0 the global one)")


def pretraining_losses(scores: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], *,
                       objective: int, img_weight: float = 1.0) -> dict[str, jax.Array]:
  """The three losses and their weighted sum from the model's scores.

  Returns:
    `loss` (the sum trained on), `masked_lm_loss`, `masked_img_loss` (before `img_weight`, as
    the official model returns it), `next_sentence_loss` (0 under objective 2), and the
    numbers of predicted tokens and regions.
  """
  labels = apply_objective(batch, objective)
  lm = masked_lm_loss(scores["prediction_scores_t"], labels["masked_lm_labels"])
  img = masked_region_kl_loss(scores["prediction_scores_v"], labels["image_target_kl"],
                              labels["image_label"])
  alignment = alignment_loss(scores["seq_relationship_score"], labels["next_sentence_label"])
  if objective == 2:
    alignment = alignment * 0
  return {"loss": lm + img_weight * img + alignment, "masked_lm_loss": lm,
          "masked_img_loss": img, "next_sentence_loss": alignment,
          "num_masked_tokens": jnp.sum(labels["masked_lm_labels"] >= 0),
          "num_masked_regions": jnp.sum(labels["image_label"] == 1)}


def pretraining_loss(apply_fn: Callable[..., dict], params: Any,
                     batch: Mapping[str, jax.Array], *, objective: int,
                     img_weight: float = 1.0, deterministic: bool = True,
                     rng: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, aux) for `jax.value_and_grad(..., has_aux=True)`.

  `apply_fn` is `ViLBertForPretraining(config).apply`; aux holds every entry of
  `pretraining_losses`.
  """
  check_batch(batch)
  rngs = {} if rng is None else {"dropout": rng}
  scores = apply_fn({"params": params}, **{ours: batch[key] for key, ours in MODEL_INPUTS.items()},
                    deterministic=deterministic, rngs=rngs)
  losses = pretraining_losses(scores, batch, objective=objective, img_weight=img_weight)
  return losses["loss"], losses
