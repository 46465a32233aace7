"""Caption-image retrieval as the paper reports it: every caption against every image.

    scores = score_matrix(model.apply, params, task, captions, images, mesh=mesh)
    metrics = rank_metrics(scores, caption_image)        # R@1/5/10, median and mean rank

`score_matrix` fills a [num_captions, num_images] matrix of raw `vil_logit` scores (the
official `eval_retrieval.py` does the same, one caption against 500 images per forward). Each
model call scores a block of `caption_chunk` captions × `image_chunk` images: the pairs are
formed on the device (texts repeated, images tiled), so the host sends each image once per
caption block, never one pair at a time, and the pair axis is sharded over the mesh's batch
axes as the trainer shards its batches. Images are read chunk by chunk, so a 5k-image set
never sits in host memory at once.

Ranks and the tie rule. Rank 1 is the best. A caption's image rank is 1 + the number of
*other* images that score at least as high as its own image: ties count against the model
(pessimistic), so a constant score matrix gets the worst rank, not a lucky one. Text
retrieval (image -> caption) ranks an image's captions the same way and takes its
best-ranked caption (an image has 5): 1 + the number of captions of *other* images that score
at least as high as its best caption. The official code reports image retrieval only
(the official `eval_retrieval.py`); text retrieval is the standard second direction.

COCO 5k versus 1k is only the size of the image set: rank over the first N images of the split
(`limit_images`) with the captions of those images.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from twelve_in_one.tasks.registry import Task
from twelve_in_one.train import sharding

RECALL_AT = (1, 5, 10)
TEXT_KEYS = ("input_ids", "input_mask", "segment_ids")
IMAGE_KEYS = ("image_feat", "image_loc", "image_mask")


def image_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
  """Rank (1 = best) of each caption's own image among all images, ties pessimistic.

  Args:
    scores: [num_captions, num_images], higher is more aligned.
    caption_image: [num_captions] index of each caption's ground-truth image.
  """
  scores, caption_image = _check(scores, caption_image)
  own = scores[np.arange(len(caption_image)), caption_image]
  # `>=` counts the own image too (it ties with itself), hence no `1 +`.
  return (scores >= own[:, None]).sum(axis=1).astype(np.int64)


def text_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
  """Rank of each image's best-ranked caption among all captions, ties pessimistic.

  Images without any caption cannot be ranked and raise ValueError.
  """
  scores, caption_image = _check(scores, caption_image)
  num_images = scores.shape[1]
  positive = caption_image[:, None] == np.arange(num_images)[None, :]     # [C, I]
  empty = np.flatnonzero(~positive.any(axis=0))
  if empty.size:
    raise ValueError(f"text retrieval: image(s) {empty[:5].tolist()} have no caption among "
                     f"the {len(caption_image)} captions; every image needs at least one")
  best = np.where(positive, scores, -np.inf).max(axis=0)                  # [I]
  return 1 + ((scores >= best[None, :]) & ~positive).sum(axis=0).astype(np.int64)


def _check(scores: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores, np.float64)
  caption_image = np.asarray(caption_image, np.int64).reshape(-1)
  if scores.ndim != 2 or scores.shape[0] != caption_image.shape[0]:
    raise ValueError(f"score matrix of shape {list(scores.shape)} does not match "
                     f"{caption_image.shape[0]} caption image indices; expected "
                     "[num_captions, num_images]")
  if caption_image.size and (caption_image.min() < 0 or caption_image.max() >= scores.shape[1]):
    raise ValueError(f"caption image indices must be in [0, {scores.shape[1]}), got "
                     f"[{caption_image.min()}, {caption_image.max()}]")
  bad = np.argwhere(~np.isfinite(scores))
  if bad.size:
    raise ValueError(f"score matrix has {len(bad)} non-finite entries, the first at "
                     f"(caption, image) = {tuple(bad[0].tolist())}")
  return scores, caption_image


def summarize_ranks(ranks: np.ndarray, recall_at: Sequence[int] = RECALL_AT) -> dict[str, float]:
  """R@K in percent, median and mean rank of a rank vector."""
  ranks = np.asarray(ranks)
  out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in recall_at}
  out["median_rank"] = float(np.median(ranks))
  out["mean_rank"] = float(np.mean(ranks))
  return out


def rank_metrics(scores: np.ndarray, caption_image: np.ndarray,
                 recall_at: Sequence[int] = RECALL_AT) -> dict[str, Any]:
  """Image retrieval (caption -> image) and text retrieval (image -> caption) metrics."""
  image = image_ranks(scores, caption_image)
  text = text_ranks(scores, caption_image)
  return {"image_retrieval": summarize_ranks(image, recall_at),
          "text_retrieval": summarize_ranks(text, recall_at),
          "num_captions": int(scores.shape[0]), "num_images": int(scores.shape[1]),
          "tie_rule": "pessimistic (a tie with a wrong item counts against)"}


def limit_images(caption_image: np.ndarray, num_images: int, limit: int
                 ) -> tuple[np.ndarray, int]:
  """The captions (indices) of the first `limit` images, and the image count used.

  `limit <= 0` or a limit past the split keeps every image (the 5k protocol on a 5k split).
  """
  used = num_images if limit <= 0 else min(limit, num_images)
  keep = np.flatnonzero(np.asarray(caption_image) < used)
  return keep, used


def _pair_step(apply_fn: Callable, task: Task, pair_sharding: NamedSharding | None,
               rules: tuple) -> Callable:
  """(params, texts [c, T], images [i, R, ...]) -> vil_logit scores [c, i]."""

  def step(params, texts: Mapping[str, jax.Array], images: Mapping[str, jax.Array]):
    num_captions = texts["input_ids"].shape[0]
    num_images = images["image_feat"].shape[0]
    # Caption-major pairs: row c * num_images + i is (caption c, image i).
    inputs = {k: jnp.repeat(texts[k], num_images, axis=0) for k in TEXT_KEYS}
    inputs.update({k: jnp.tile(images[k], (num_captions,) + (1,) * (images[k].ndim - 1))
                   for k in IMAGE_KEYS})
    if pair_sharding is not None:
      inputs = {k: jax.lax.with_sharding_constraint(v, pair_sharding) for k, v in inputs.items()}
    with nn.logical_axis_rules(rules):
      out = apply_fn({"params": params}, **inputs, task_ids=task.task_id,
                     outputs=("vil_logit",), deterministic=True)
    return out["vil_logit"].reshape(num_captions, num_images).astype(jnp.float32)

  return step


def _pad_rows(arrays: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """Pads every array to `rows` rows by repeating row 0 (results of padding are dropped)."""
  out = {}
  for key, value in arrays.items():
    missing = rows - value.shape[0]
    out[key] = value if missing == 0 else np.concatenate(
        [value, np.repeat(value[:1], missing, axis=0)])
  return out


def _stack(items: Sequence[Mapping[str, np.ndarray]], keys: Sequence[str]
           ) -> dict[str, np.ndarray]:
  return {k: np.stack([np.asarray(item[k]) for item in items]) for k in keys}


def chunk_sizes(caption_chunk: int, image_chunk: int, mesh) -> tuple[int, int]:
  """Chunk sizes whose pair count (captions × images) splits evenly over the batch shards."""
  if caption_chunk < 1 or image_chunk < 1:
    raise ValueError(f"caption_chunk={caption_chunk} and image_chunk={image_chunk} must be "
                     "positive")
  shards = sharding.data_parallel_size(mesh) if mesh is not None else 1
  need = shards // math.gcd(shards, caption_chunk * image_chunk)
  return caption_chunk, image_chunk * need


def score_matrix(apply_fn: Callable, params: Any, task: Task,
                 captions: Mapping[str, np.ndarray], images: Sequence[Mapping[str, np.ndarray]],
                 *, mesh=None, rules: tuple = (), caption_chunk: int = 8,
                 image_chunk: int = 64, progress: bool = True) -> np.ndarray:
  """Every caption against every image: raw `vil_logit` scores [num_captions, num_images].

  Args:
    apply_fn: `ViLBertForVLTasks.apply`.
    params: the parameters (sharded as the trainer shards them, or plain arrays).
    task: the retrieval task (its task token is used).
    captions: `input_ids`, `input_mask`, `segment_ids`, each [C, T].
    images: random access to images; item i has `image_feat` [R, F], `image_loc` [R, 5] and
      `image_mask` [R] (e.g. the images of `data.pipeline.ranking_datasets`).
    mesh: the trainer's mesh; the pair axis of each call is sharded over its batch axes.
    rules: the logical-axis rules of the run (for the model's sharding constraints).
    caption_chunk, image_chunk: one call scores caption_chunk × image_chunk pairs (the image
      chunk is rounded up so the pairs split evenly over the batch shards).
    progress: show a progress bar over the calls.
  """
  missing = [k for k in TEXT_KEYS if k not in captions]
  if missing:
    raise ValueError(f"task {task.name}: captions lack {missing}; they have {sorted(captions)}")
  num_captions, num_images = int(captions["input_ids"].shape[0]), len(images)
  if num_captions == 0 or num_images == 0:
    raise ValueError(f"task {task.name}: nothing to rank ({num_captions} captions, "
                     f"{num_images} images)")
  caption_chunk, image_chunk = chunk_sizes(min(caption_chunk, num_captions),
                                           min(image_chunk, num_images), mesh)
  pair_sharding = None
  if mesh is not None:
    pair_sharding = NamedSharding(mesh, P(sharding.BATCH_AXES))
  step = jax.jit(_pair_step(apply_fn, task, pair_sharding, tuple(rules)))
  texts = {k: np.asarray(captions[k], np.int32) for k in TEXT_KEYS}
  scores = np.empty((num_captions, num_images), np.float32)
  image_starts = range(0, num_images, image_chunk)
  caption_starts = range(0, num_captions, caption_chunk)
  bar = tqdm.tqdm(total=len(image_starts) * len(caption_starts), disable=not progress,
                  desc=f"{task.name} pairs", unit="call", dynamic_ncols=True)
  context = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  with context, bar:
    for i0 in image_starts:
      i1 = min(i0 + image_chunk, num_images)
      block = _pad_rows(_stack([images[i] for i in range(i0, i1)], IMAGE_KEYS), image_chunk)
      block = jax.device_put(block, sharding.replicated(mesh)) if mesh is not None else block
      for c0 in caption_starts:
        c1 = min(c0 + caption_chunk, num_captions)
        text = _pad_rows({k: v[c0:c1] for k, v in texts.items()}, caption_chunk)
        values = np.asarray(jax.device_get(step(params, text, block)))
        scores[c0:c1, i0:i1] = values[:c1 - c0, :i1 - i0]
        bar.update(1)
  return scores

