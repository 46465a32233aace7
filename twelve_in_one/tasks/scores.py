"""Per-example task scores (the reference's batch scores before the division by B).

Each function returns a float vector [B] whose mean is the reference's `batch_score`, so
validation can sum scores over batches and divide by the number of real examples, masking any
padding rows of a last partial batch.

| head type | score |
|---|---|
| VL-classifier(-GQA) | soft accuracy: the target value at the argmax answer |
| VL-logit | 1 if the argmax option is the target |
| V-logit | 1 if the argmax region's IoU target is > 0.5 |
| V-logit-mc | 1 if the argmax candidate is the argmax of the targets |
| VL-binary / VL-tri | the one-hot target at the argmax class |
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from twelve_in_one.tasks import losses


def target_at_argmax(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Soft accuracy (VQA, GQA, VG-QA) and one-hot accuracy (NLVR2, SNLI-VE)."""
  best = jnp.argmax(logits, axis=-1)
  return jnp.take_along_axis(targets, best[:, None], axis=-1)[:, 0].astype(jnp.float32)


def option_accuracy(logits: jax.Array, targets: jax.Array, num_options: int) -> jax.Array:
  """Retrieval: 1 where the highest-scoring of the K options is the target option."""
  scores = losses.option_scores(logits, num_options)
  return (jnp.argmax(scores, axis=-1) == targets.astype(jnp.int32)).astype(jnp.float32)


def grounding_accuracy(vision_logit: jax.Array, targets: jax.Array,
                       threshold: float = 0.5) -> jax.Array:
  """Referring expressions: 1 where the argmax region overlaps the referred box with IoU > 0.5."""
  logits = vision_logit[..., 0]
  targets = targets.reshape(logits.shape)
  best = jnp.argmax(logits, axis=1)
  iou = jnp.take_along_axis(targets, best[:, None], axis=1)[:, 0]
  return (iou > threshold).astype(jnp.float32)


def candidate_accuracy(vision_logit: jax.Array, multiple_choice_ids: jax.Array,
                       targets: jax.Array, num_detected_regions: int) -> jax.Array:
  """Visual7W / GuessWhat pointing: 1 where the argmax candidate is the answer."""
  logits = losses.candidate_logits(vision_logit, multiple_choice_ids, num_detected_regions)
  targets = targets.reshape(logits.shape)
  return (jnp.argmax(logits, axis=1) == jnp.argmax(targets, axis=1)).astype(jnp.float32)
