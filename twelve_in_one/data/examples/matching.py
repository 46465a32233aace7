"""Example builder of caption-image retrieval (TASK7 COCO, TASK8 Flickr30k).

As the official `RetreivalDataset` builds a training example: for every caption, four
(image, caption) options with target 0 (the positive is always option 0):

1. (image, caption);
2. (image, a random caption of a random *other* image);
3. (a random other image, caption);
4. (image, a random caption of a **hard-negative** image): drawn from the image's row of
   `hard_negative[_cleaned].pkl`, pool positions 1.. (position 0 is the image itself).

The validation form (`split="val"`, the official training-time validation) is the same
4-way construction with option 4 drawn at random, as the official class does without a pool.
The test form ranks every caption against every image (`RetreivalDatasetVal`, the 1000-image
test set scored in two blocks of 500); the prepared records support it directly (captions with
their image index, one image record per image), see `pipeline.ranking_datasets`. The official
test file is the validation file (`all_data_final_test_set0_2014.jsonline`), so `test` reads it.

Negatives are drawn when an example is assembled, from `example_rng(seed, epoch, index)`:
deterministic for a seed and an example, fresh every epoch (as the official sampler is), and
independent of how the data was prepared.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from twelve_in_one.data.annotations.retrieval import (
    RETRIEVAL_FILES,
    load_hard_negatives,
    load_retrieval,
)
from twelve_in_one.data.errors import DataError
from twelve_in_one.data.examples.common import (
    Layout,
    Lookup,
    SplitExamples,
    detected_block,
    pad_image,
    text_records,
)
from twelve_in_one.data.examples.context import BuildContext, ImageTable

POOL_NOT_IN_SPLIT = "hard-negative pool entries whose image is not in the split (not drawn)"


def retrieval_file(split: str) -> str:
  """The official JSON-lines file of a split (test = the validation file, ranking form)."""
  return RETRIEVAL_FILES["val" if split == "test" else split]


def build_retrieval_split(ctx: BuildContext, split: str) -> SplitExamples:
  """Captions (one record each) + the split's images + the tables the negatives need."""
  layout = Layout.from_task(ctx.task)
  annotations = load_retrieval(ctx.dataroot / retrieval_file(split),
                               ctx.reader_dataset, split,
                               clean_image_ids=ctx.clean_ids(split))
  source = annotations.source
  images = ImageTable(ctx.features(split=split))
  for image_id in annotations.image_ids:
    images.add(image_id, source, f"image id {image_id}")
  if len(images) < 2:
    raise DataError.at(source, f"split {split!r}", f"has {len(images)} image(s)",
                       "at least 2 images (the negatives come from other images)")
  input_ids, input_mask = text_records(ctx.tokenizer, [e["caption"] for e in annotations],
                                       layout.seq_len)
  image_of_caption = np.asarray([images.add(e["image_id"], source, "") for e in annotations],
                                np.int32)
  # Captions of each image, as CSR over the split's image indices.
  offsets = np.zeros((len(images) + 1,), np.int64)
  captions = np.zeros((len(annotations),), np.int32)
  for image_id, caption_indices in annotations.captions_of_image.items():
    index = images.add(image_id, source, "")
    offsets[index + 1] = len(caption_indices)
  offsets = np.cumsum(offsets)
  fill = offsets[:-1].copy()
  for image_id, caption_indices in annotations.captions_of_image.items():
    index = images.add(image_id, source, "")
    captions[fill[index]:fill[index] + len(caption_indices)] = caption_indices
  tables = {"image_caption_offsets": offsets, "image_captions": captions}
  skipped = annotations.skipped
  hard = split == "train"
  if hard:
    tables["hard_pool"] = _hard_pool(ctx, images, skipped)
  records = [{"input_ids": input_ids[row], "input_mask": input_mask[row],
              "image_index": image_of_caption[row:row + 1], "example_id": np.int64(row),
              "example_key": f"{entry['image_id']}"} for row, entry in enumerate(annotations)]
  regions = layout.regions

  def load_image(index: int):
    return detected_block(images.read(index), regions)

  return SplitExamples(layout, split, records, images.keys, load_image, skipped, source,
                       tables=tables, hard_negatives=hard)


def _hard_pool(ctx: BuildContext, images: ImageTable, skipped: Any) -> np.ndarray:
  """[num_images, pool_size - 1] split image indices of each image's hard negatives (-1: none)."""
  path = ctx.dataroot / f"hard_negative{'_cleaned' if ctx.clean else ''}.pkl"
  pool = load_hard_negatives(path)
  index_of_key = {key: index for index, key in enumerate(images.keys)}
  row_of = {str(image_id): row for image_id, row in pool.row_of.items()}
  table = np.full((len(images), pool.pool.shape[1] - 1), -1, np.int32)
  outside = 0
  for index, key in enumerate(images.keys):
    row = row_of.get(key)
    if row is None:
      raise DataError.at(path, f"image id {key}", "is in the training split but has no "
                         "row in train_image_list",
                         "a pool row for every training image (use hard_negative_cleaned.pkl "
                         "with the clean filter on, hard_negative.pkl with it off)")
    neighbours = [index_of_key.get(str(pool.image_ids[int(j)]), -1) for j in pool.pool[row, 1:]]
    table[index] = neighbours
    outside += sum(1 for j in neighbours if j < 0)
  skipped.add(POOL_NOT_IN_SPLIT, outside)
  return table


def assemble_retrieval(layout: Layout, index: int, record: Mapping[str, Any], lookup: Lookup,
                       tables: Mapping[str, np.ndarray], rng: np.random.Generator,
                       hard_negatives: bool) -> dict[str, np.ndarray]:
  """The 4-option training/validation example of caption `index` (options along axis 0)."""
  if layout.num_options != 4:
    raise ValueError(f"task {layout.task}: the retrieval example has 4 options, the task "
                     f"asks for {layout.num_options}")
  offsets, captions = tables["image_caption_offsets"], tables["image_captions"]
  num_images = offsets.shape[0] - 1
  image = int(np.asarray(record["image_index"]).reshape(-1)[0])

  def other_image() -> int:
    while True:  # rejection, as the official `while True: random.choice(...)` loop
      candidate = int(rng.integers(num_images))
      if candidate != image:
        return candidate

  def random_caption(of_image: int) -> Mapping[str, Any]:
    start, stop = int(offsets[of_image]), int(offsets[of_image + 1])
    return lookup.record(int(captions[start + int(rng.integers(stop - start))]))

  # Draw order follows the official __getitem__: image 2, its caption, image 3, image 4.
  caption2 = random_caption(other_image())
  image3 = other_image()
  pool = tables.get("hard_pool") if hard_negatives else None
  candidates = pool[image][pool[image] >= 0] if pool is not None else ()
  image4 = int(candidates[int(rng.integers(len(candidates)))]) if len(candidates) else (
      other_image())
  caption4 = random_caption(image4)

  positive = pad_image(lookup.image(image), layout.regions)
  negative = pad_image(lookup.image(image3), layout.regions)
  texts = [record, caption2, record, caption4]
  options = [positive, positive, negative, positive]
  input_ids = np.stack([np.asarray(text["input_ids"], np.int32) for text in texts])
  return {
      "input_ids": input_ids,
      "input_mask": np.stack([np.asarray(text["input_mask"], np.int32) for text in texts]),
      "segment_ids": np.zeros_like(input_ids),
      "image_feat": np.stack([option[0] for option in options]),
      "image_loc": np.stack([option[1] for option in options]),
      "image_mask": np.stack([option[2] for option in options]),
      "target": np.int32(0),
  }
