"""A Conceptual Captions-style pretraining corpus over the generated scenes.

The official pretraining reads `training_feat_all.lmdb` / `validation_feat_all.lmdb` (one
record per image: detector features, the detector's 1601-way class distribution per region,
boxes, size, id and one caption) and `caption_train.json` / `caption_val.json`. The generated
release writes the same files under `datasets/conceptual_caption/` (`data.concap.writer`), so
the pretraining data path runs on the embedded data as on the real corpus.

Images: the training scenes of the COCO-, Visual Genome- and Flickr-like pools give the
`train` split, their validation scenes the `val` split. The task datasets use the same
scenes, as the real Conceptual Captions overlaps the tasks' image distribution; no test
scene is in the corpus, so pretraining never sees an image a task is tested on.

Caption: one per image, drawn from the retrieval captions of its scene (`caption_sets.captions`)
with a stream of its own, so the corpus does not change the task datasets.

Class distribution (`image_target_wp`): what the generated detector "implies" for each box.
The scene's object types (shape × colour × size) are classes 1..48 of the 1601; class 0 is
the background. A box drawn around object k puts IoU(box, object k's box) on k's class and
the rest on the background; a distractor box is all background.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from twelve_in_one.data.concap.release import SPLIT_FILES, CaptionedImage
from twelve_in_one.data.concap.writer import write_split
from twelve_in_one.data.generate import caption_sets
from twelve_in_one.data.generate.layout import GeneratorConfig
from twelve_in_one.data.generate.pools import POOL_CODE, PoolImage, split_images
from twelve_in_one.data.generate.detector import box_iou
from twelve_in_one.data.generate.scenes import COLOURS, SHAPES, SIZES, SceneObject

CORPUS_FOLDER = "conceptual_caption"
# The pools whose scenes are captioned, and which of their splits feed each corpus split.
CORPUS_POOLS = ("coco", "genome", "flickr")
CORPUS_SPLITS = {"train": "train", "val": "val"}
NUM_CLASSES = 1601           # the Visual Genome detector's classes, background included
BACKGROUND = 0
# The random stream of the captions (the pools use 1 for scenes and 2 for detections).
_CAPTION_STREAM = 7

OBJECT_CLASSES: dict[tuple[str, str, str], int] = {
    key: 1 + index for index, key in enumerate(
        (shape, colour, size) for shape in SHAPES for colour in COLOURS for size in SIZES)}


def object_class(obj: SceneObject) -> int:
  """The detector class of an object type (1..48)."""
  return OBJECT_CLASSES[(obj.shape, obj.colour, obj.size)]


def region_classes(image: PoolImage) -> np.ndarray:
  """float32 [num_boxes, 1601]: each detected box's class distribution (module docstring)."""
  boxes = image.detections.boxes
  targets = np.zeros((len(boxes), NUM_CLASSES), np.float32)
  for row, (box, index) in enumerate(zip(boxes, image.detections.object_index, strict=True)):
    if index < 0:
      targets[row, BACKGROUND] = 1.0
      continue
    obj = image.scene.objects[int(index)]
    overlap = float(box_iou(np.asarray([box], np.float64), np.asarray(obj.box, np.float64))[0])
    overlap = min(max(overlap, 0.0), 1.0)
    targets[row, object_class(obj)] = overlap
    targets[row, BACKGROUND] += 1.0 - overlap
  return targets


def caption_of(image: PoolImage, config: GeneratorConfig) -> str:
  """The image's one caption (a retrieval caption of its scene, on a stream of its own)."""
  rng = np.random.default_rng([config.seed, POOL_CODE[image.pool], image.index, _CAPTION_STREAM])
  return caption_sets.captions(image.scene, rng)[0]


def corpus_records(images: Sequence[PoolImage], split: str, config: GeneratorConfig
                   ) -> list[CaptionedImage]:
  """The corpus records of one pool's images of `split` (before their features are freed)."""
  records = []
  for image in split_images(images, CORPUS_SPLITS[split]):
    if image.features is None:
      raise ValueError(f"features of {image.pool} image {image.key} were already released")
    records.append(CaptionedImage(
        image_feature_wp=np.asarray(image.features, np.float32),
        image_target_wp=region_classes(image),
        image_location_wp=np.asarray(image.detections.boxes, np.float32),
        num_boxes=len(image.detections.boxes), image_h=image.scene.height,
        image_w=image.scene.width, image_id=f"{image.pool}_{image.key}",
        caption=caption_of(image, config)))
  return records


class CorpusWriter:
  """Gathers records pool by pool (while their features exist), then writes the corpus."""

  def __init__(self, config: GeneratorConfig) -> None:
    self.config = config
    self.records: dict[str, list[CaptionedImage]] = {split: [] for split in CORPUS_SPLITS}

  def add_pool(self, pool: str, images: Sequence[PoolImage]) -> None:
    if pool not in CORPUS_POOLS:
      return
    for split in CORPUS_SPLITS:
      self.records[split].extend(corpus_records(images, split, self.config))

  def write(self, datasets_dir: str) -> dict[str, dict[str, int]]:
    """Writes `datasets_dir/conceptual_caption/`; returns the records per split."""
    folder = f"{datasets_dir}/{CORPUS_FOLDER}"
    counts = {}
    for split, records in self.records.items():
      write_split(folder, split, records, overwrite=True)
      counts[split] = {"images": len(records), "files": list(SPLIT_FILES[split])}
    return counts
