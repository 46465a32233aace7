"""One pretraining example from one prepared corpus record, as `BertPreprocessBatch` builds it.

Every random choice comes from the `np.random.Generator` passed in, which the pipeline derives
from (seed, epoch, record index): the same triple gives the same example, whatever the batch
size, process count or restart. The rules are the official ones (`random_cap`, `random_word`,
`random_region`, `convert_example_to_features`, and the global region of
`ConceptCapLoaderTrain.__iter__`):

* **Alignment.** With probability 1/2 the caption is replaced by a caption drawn uniformly
  from the split's caption file, and `next_sentence_label` is 1 (0 otherwise). The draw may
  hit the image's own caption; the official draw does not exclude it either. (The official
  draw indexes the caption list below the LMDB's record count; the two are equal for a caption
  file that lists the split's images.) With `draw_negatives=False` (`train_concap.py
  --objective 2`) every pair stays aligned.
* **Text.** The caption's word pieces, cut to `max_seq_length - 2`, each selected with
  probability 0.15; a selected token becomes [MASK] with probability 0.8, a token drawn
  uniformly from the whole vocabulary with probability 0.1, and stays itself otherwise.
  `masked_lm_labels` holds the original id of every selected token and -1 elsewhere ([CLS],
  [SEP] and padding included). Then `[CLS] tokens [SEP]`, padded with id 0.
* **Regions.** Each detector region is selected with probability 0.15; a selected region's
  feature is zeroed with probability 0.9 and kept otherwise. `image_label` is 1 on selected
  regions, -1 elsewhere. Every region whose IoU with a selected region exceeds 0.4 (the
  selected one included) is flagged; flags only shrink the count that the global region's sum
  is divided by (`regions.global_feature`). Locations and the class-distribution targets are
  never masked.
* **Misaligned pairs keep their labels**, as the official loader yields them: masking applies to
  the random caption and to the regions alike. `train_concap.py --objective 1` (the README's
  pretraining command) drops the masked-token and masked-region labels of misaligned pairs in
  the training step, which the pretraining loss's `objective` does, not the data.

Outputs (`BATCH_KEYS`), with T = `max_seq_length`, R = `max_boxes + 1` (region 0 global):
`input_ids`, `token_type_ids`, `attention_mask`, `masked_lm_labels` int32 [T]; `image_feat`
float32 [R, F]; `image_loc` float32 [R, 5]; `image_mask` int32 [R]; `image_label` int32 [R-1]
and `image_target_kl` float32 [R-1, C] for regions 1..R-1; `next_sentence_label` int32 [].

Generalisation: the official loader holds exactly 36 regions per image (its flag array only
broadcasts then). With fewer regions the rows past them are padding: never selected, zero
targets, and not counted by the global region's divisor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from twelve_in_one.data.concap.region_geometry import GLOBAL_LOCATION, global_feature
from twelve_in_one.data.pipeline import float16_to_float32

MASK_PROBABILITY = 0.15
TOKEN_MASK_FRACTION = 0.8      # of the selected tokens: [MASK]
TOKEN_RANDOM_FRACTION = 0.1    # of the selected tokens: a random token (the rest stay)
REGION_ZERO_FRACTION = 0.9     # of the selected regions: zeroed (the rest stay)
NEGATIVE_PROBABILITY = 0.5
IGNORE = -1
BATCH_KEYS = ("input_ids", "token_type_ids", "attention_mask", "image_feat", "image_loc",
              "image_mask", "masked_lm_labels", "image_label", "image_target_kl",
              "next_sentence_label")


@dataclasses.dataclass(frozen=True)
class PretrainingLayout:
  """The shapes and special token ids of pretraining examples (recorded by `prepare`)."""
  max_seq_length: int = 36       # `train_concap.py --max_seq_length`
  max_boxes: int = 36            # the official `region_len`; R = max_boxes + 1
  feature_dim: int = 2048
  num_classes: int = 1601
  vocab_size: int = 30522
  mask_id: int = 103
  cls_id: int = 101
  sep_id: int = 102

  @property
  def num_regions(self) -> int:
    """R: the detector regions and the global region 0."""
    return self.max_boxes + 1


@dataclasses.dataclass(frozen=True)
class RegionMasks:
  """The region choices of one example, each bool [num_boxes]."""
  selected: np.ndarray     # predicted (`image_label` 1)
  zeroed: np.ndarray       # feature set to zero (a subset of `selected`)
  flagged: np.ndarray      # IoU > 0.4 with a selected region (left out of the global divisor)


def mask_tokens(token_ids: np.ndarray, rng: np.random.Generator, *, vocab_size: int,
                mask_id: int) -> tuple[np.ndarray, np.ndarray]:
  """The official `random_word` on word-piece ids: (masked ids, labels) int32, -1 = ignored."""
  token_ids = np.asarray(token_ids, np.int32)
  draws = rng.random(token_ids.shape[0])
  replacements = rng.integers(0, vocab_size, token_ids.shape[0], dtype=np.int32)
  selected = draws < MASK_PROBABILITY
  scaled = draws / MASK_PROBABILITY
  to_mask = selected & (scaled < TOKEN_MASK_FRACTION)
  to_random = selected & ~to_mask & (scaled < TOKEN_MASK_FRACTION + TOKEN_RANDOM_FRACTION)
  masked = np.where(to_mask, np.int32(mask_id), np.where(to_random, replacements, token_ids))
  labels = np.where(selected, token_ids, np.int32(IGNORE))
  return masked.astype(np.int32), labels.astype(np.int32)


def mask_regions(overlaps: np.ndarray, rng: np.random.Generator) -> RegionMasks:
  """The official `random_region` choices for bool `overlaps` [N, N] (IoU > 0.4)."""
  overlaps = np.asarray(overlaps, bool)
  draws = rng.random(overlaps.shape[0])
  selected = draws < MASK_PROBABILITY
  zeroed = selected & (draws / MASK_PROBABILITY < REGION_ZERO_FRACTION)
  flagged = overlaps[selected].any(axis=0)
  return RegionMasks(selected, zeroed, flagged)


def draw_alignment(rng: np.random.Generator, num_captions: int,
                   draw_negatives: bool = True) -> int | None:
  """The official `random_cap`: the index of a random other caption, or None (aligned).

  Both numbers are always drawn, so the rest of the example's stream does not depend on
  `draw_negatives`.
  """
  misaligned = rng.random() > NEGATIVE_PROBABILITY
  index = int(rng.integers(0, max(num_captions, 1)))
  return index if (draw_negatives and misaligned and num_captions > 0) else None


def _as_float32(source: np.ndarray, out: np.ndarray) -> None:
  """Write `source` into the float32 rows `out` (float16 decoded bit-exactly and fast)."""
  if source.dtype == np.float16:
    float16_to_float32(source, out)
  else:
    out[...] = source


def build_pretraining_example(record: Mapping[str, Any], layout: PretrainingLayout,
                              rng: np.random.Generator, caption_of: Callable[[int], np.ndarray],
                              num_captions: int, *, draw_negatives: bool = True
                              ) -> dict[str, np.ndarray]:
  """One masked example (see the module docstring) from a prepared record.

  Args:
    record: `caption_ids` [n], `image_feat` [N, F], `image_target` [N, C], `image_loc`
      [N, 5] (normalised, area 5th) and `overlap` uint8 [N * N] (`regions.overlap_flags`).
    layout: the output shapes and token ids.
    rng: the example's generator (consumed: alignment, then tokens, then regions).
    caption_of: the word-piece ids of caption `i` of the split's caption file.
    num_captions: how many captions `caption_of` can return.
    draw_negatives: False keeps every pair aligned (objective 2).

  Raises:
    ValueError: the record has more regions than `layout.max_boxes`.
  """
  seq_len, regions = layout.max_seq_length, layout.num_regions
  features = np.asarray(record["image_feat"])
  num_boxes = features.shape[0]
  if num_boxes > layout.max_boxes:
    raise ValueError(f"record with {num_boxes} regions; this layout holds {layout.max_boxes}")

  negative = draw_alignment(rng, num_captions, draw_negatives)
  tokens = record["caption_ids"] if negative is None else caption_of(negative)
  tokens = np.asarray(tokens, np.int32)[:seq_len - 2]
  masked, token_labels = mask_tokens(tokens, rng, vocab_size=layout.vocab_size,
                                     mask_id=layout.mask_id)
  overlaps = np.asarray(record["overlap"], bool).reshape(num_boxes, num_boxes)
  region_masks = mask_regions(overlaps, rng)

  length = tokens.shape[0] + 2
  input_ids = np.zeros(seq_len, np.int32)
  input_ids[0], input_ids[1:length - 1], input_ids[length - 1] = (layout.cls_id, masked,
                                                                  layout.sep_id)
  masked_lm_labels = np.full(seq_len, IGNORE, np.int32)
  masked_lm_labels[1:length - 1] = token_labels
  attention_mask = (np.arange(seq_len) < length).astype(np.int32)

  image_feat = np.zeros((regions, features.shape[1]), np.float32)
  _as_float32(features, image_feat[1:num_boxes + 1])
  image_feat[1:num_boxes + 1][region_masks.zeroed] = 0
  image_feat[0] = global_feature(image_feat[1:num_boxes + 1], region_masks.flagged)
  image_loc = np.zeros((regions, 5), np.float32)
  image_loc[0] = GLOBAL_LOCATION
  image_loc[1:num_boxes + 1] = record["image_loc"]
  image_mask = (np.arange(regions) <= num_boxes).astype(np.int32)
  image_label = np.full(regions - 1, IGNORE, np.int32)
  image_label[:num_boxes][region_masks.selected] = 1
  target = np.asarray(record["image_target"])
  image_target_kl = np.zeros((regions - 1, target.shape[1]), np.float32)
  _as_float32(target, image_target_kl[:num_boxes])

  return {"input_ids": input_ids, "token_type_ids": np.zeros(seq_len, np.int32),
          "attention_mask": attention_mask, "image_feat": image_feat, "image_loc": image_loc,
          "image_mask": image_mask, "masked_lm_labels": masked_lm_labels,
          "image_label": image_label, "image_target_kl": image_target_kl,
          "next_sentence_label": np.int32(0 if negative is None else 1)}


def without_labels(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`example` with every label set to -1 (an evaluation padding row: no loss counts it)."""
  for key in ("masked_lm_labels", "image_label"):
    example[key] = np.full_like(example[key], IGNORE)
  example["next_sentence_label"] = np.int32(IGNORE)
  return example
