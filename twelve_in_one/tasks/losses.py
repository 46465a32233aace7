"""Task losses, exactly as the official code reduces and scales them.

Every loss is a pure jnp function `(logits, batch...) -> scalar`:

| head type | loss |
|---|---|
| VL-classifier(-GQA) | BCEWithLogits, mean over B×C, times C (= sum over answers, mean over batch) |
| VL-logit | cross-entropy over the K options, positive at `target` (always 0 in training) |
| V-logit | BCEWithLogits on [B, R, 1] IoU targets, mean over B×R, times R |
| V-logit-mc | gather the K candidates after the detector regions, BCE mean over B×K, times K |
| VL-binary / VL-tri | BCEWithLogits mean against a one-hot target, no class-count factor |

The per-task `loss_scale` (task lr / smallest lr in the run) is applied by the trainer, not here,
so these values equal the reference's `ForwardModelsTrain` losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Element-wise binary cross-entropy on logits, in the numerically stable form torch uses."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  targets = targets.astype(logits.dtype)
  return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def soft_bce_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """VQA-style loss: mean BCE times the number of classes (the official `* target.size(1)`)."""
  return bce_with_logits(logits, targets).mean() * targets.shape[1]


def onehot_bce_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """NLVR2 / SNLI-VE loss: mean BCE against a one-hot target, without the class-count factor."""
  return bce_with_logits(logits, targets).mean()


def retrieval_ce_loss(logits: jax.Array, targets: jax.Array, num_options: int) -> jax.Array:
  """Retrieval: `vil_logit` [B*K, 1] viewed as [B, K]; cross-entropy against `targets` [B]."""
  scores = option_scores(logits, num_options)
  log_probs = jax.nn.log_softmax(scores, axis=-1)
  picked = jnp.take_along_axis(log_probs, targets.astype(jnp.int32)[:, None], axis=-1)
  return -picked.mean()


def option_scores(logits: jax.Array, num_options: int) -> jax.Array:
  """[B*K, 1] option-major logits (row 4b+k = option k of example b) -> [B, K]."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return logits.reshape(-1, num_options)


def region_bce_loss(vision_logit: jax.Array, targets: jax.Array) -> jax.Array:
  """Referring expressions: BCE over every region (padding included), mean, times regions."""
  targets = targets.reshape(vision_logit.shape)
  return bce_with_logits(vision_logit, targets).mean() * vision_logit.shape[1]


def candidate_logits(vision_logit: jax.Array, multiple_choice_ids: jax.Array,
                     num_detected_regions: int) -> jax.Array:
  """Visual7W / GuessWhat: the logits of the K candidate boxes, [B, K].

  The candidates are ground-truth boxes stored after the detector's regions, so
  `multiple_choice_ids` index into `vision_logit[:, num_detected_regions:]` (the reference
  hard-codes 101 = 1 global + 100 detected regions).
  """
  gt_part = vision_logit[:, num_detected_regions:, 0]
  return jnp.take_along_axis(gt_part, multiple_choice_ids.astype(jnp.int32), axis=1)


def candidate_bce_loss(vision_logit: jax.Array, multiple_choice_ids: jax.Array,
                       targets: jax.Array, num_detected_regions: int) -> jax.Array:
  """BCE of the gathered candidates against their IoU targets, mean times K."""
  logits = candidate_logits(vision_logit, multiple_choice_ids, num_detected_regions)
  targets = targets.reshape(logits.shape)
  return bce_with_logits(logits, targets).mean() * logits.shape[1]
