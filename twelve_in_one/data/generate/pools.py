"""Image pools: the scenes each dataset draws on, rendered, detected and featurised.

The release's datasets share images as the real ones do:

* ``coco``: VQA, COCO retrieval, RefCOCO/+/g and GuessWhat (COCO-like ids);
* ``genome``: VG-QA, GQA and Visual7W (Visual Genome-like ids; GQA uses
  them as strings, Visual7W keys them ``v7w_<id>``);
* ``flickr``: Flickr30k retrieval and SNLI-VE (Flickr-like ids);
* ``nlvr2``: NLVR2's image pairs, keyed ``<split>-<set>-<pair>-img0/1``.

The three first pools come in twins (:func:`~twelve_in_one.data.generate.
scenes.make_twin`), both twins in the same split. Every image is rendered to
a PNG under ``images/<pool>/``, gets detector-like boxes and features from
its pixels, and the features of its objects' exact boxes for the GT-box
LMDBs. Splits never share images, so no task validates on a training image.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from twelve_in_one.data.features import write_feature_lmdb
from twelve_in_one.data.generate import detector, extractor, scenes
from twelve_in_one.data.generate.layout import ID_BASE, GeneratorConfig

POOL_CODE = {"coco": 1, "genome": 2, "flickr": 3, "nlvr2": 4}
SPLIT_CODE = {"train": 1, "val": 2, "dev": 2, "test": 3}
# Sub-streams of a scene's random numbers.
_SCENE, _DETECT = 1, 2


@dataclasses.dataclass
class PoolImage:
  """One rendered image of a pool.

  Attributes:
    pool: the pool name.
    index: position in the pool (0..).
    split: train / val / test (NLVR2: train / dev / test).
    image_id: the dataset id (an int; for NLVR2 the feature key).
    key: the key in the pool's feature LMDB (also the PNG name).
    scene: the scene.
    detections: the detector-like boxes.
    features: float32 [N, 2048] region features (released after writing).
    mean_feature: float32 [2048], the global region (mean of ``features``).
    object_features: float32 [num_objects, 2048] at the objects' exact boxes.
    twin: index of the twin image in the pool, if any.
    change: for the derived twin, ``(object index, changed attribute)``.
  """

  pool: str
  index: int
  split: str
  image_id: int | str
  key: str
  scene: scenes.Scene
  detections: detector.Detections
  features: np.ndarray | None
  mean_feature: np.ndarray
  object_features: np.ndarray
  twin: int | None = None
  change: tuple[int, str] | None = None

  @property
  def png_path(self) -> str:
    """Path of the PNG relative to the output folder."""
    return os.path.join("images", self.pool, f"{self.key}.png")


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """A pool image before rendering: its split, ids, scene and twin."""

  split: str
  image_id: int | str
  key: str
  scene: scenes.Scene
  twin: int | None
  change: tuple[int, str] | None


def _rng(config: GeneratorConfig, *path: int) -> np.random.Generator:
  return np.random.default_rng([config.seed, *path])


def _twin_specs(pool: str, config: GeneratorConfig) -> list[SceneSpec]:
  specs: list[SceneSpec] = []
  for split, size in config.pool_sizes(pool).items():
    for pair in range(size // 2):
      rng = _rng(config, POOL_CODE[pool], SPLIT_CODE[split], pair, _SCENE)
      base = scenes.sample_scene(rng)
      twin, changed, what = scenes.make_twin(base, rng)
      first = len(specs)
      for offset, (scene, change) in enumerate(((base, None), (twin, (changed, what)))):
        image_id = ID_BASE[pool] + first + offset
        specs.append(SceneSpec(split, image_id, str(image_id), scene, first + 1 - offset, change))
  return specs


def _pair_specs(config: GeneratorConfig) -> list[SceneSpec]:
  specs: list[SceneSpec] = []
  for split, size in config.pool_sizes("nlvr2").items():
    for pair in range(size):
      rng = _rng(config, POOL_CODE["nlvr2"], SPLIT_CODE[split], pair, _SCENE)
      # The two images share a palette of three object types, so statements
      # comparing them are often close calls.
      types = [(str(rng.choice(scenes.SHAPES)), str(rng.choice(list(scenes.COLOURS))))
               for _ in range(3)]
      stem = f"{split}-{pair // 4}-{pair % 4}"
      first = len(specs)
      for side in (0, 1):
        key = f"{stem}-img{side}"
        specs.append(SceneSpec(split, key, key, scenes.sample_scene(rng, types), first + 1 - side,
                           None))
  return specs


def scene_specs(pool: str, config: GeneratorConfig) -> list[SceneSpec]:
  """The scenes of a pool, in pool order (cheap: nothing is rendered)."""
  if pool not in POOL_CODE:
    raise ValueError(f"unknown pool {pool!r}; expected one of {sorted(POOL_CODE)}")
  return _pair_specs(config) if pool == "nlvr2" else _twin_specs(pool, config)


def build_pool(pool: str, config: GeneratorConfig, out_dir: str) -> list[PoolImage]:
  """Render, detect and featurise every image of ``pool``; PNGs go under ``out_dir``."""
  specs = scene_specs(pool, config)
  os.makedirs(os.path.join(out_dir, "images", pool), exist_ok=True)
  found: list[tuple[detector.Detections, np.ndarray]] = []
  for index, spec in enumerate(specs):
    picture = scenes.render(spec.scene)
    detections = detector.detect(
        spec.scene, config.num_regions,
        _rng(config, POOL_CODE[pool], SPLIT_CODE[spec.split], index, _DETECT))
    boxes = np.concatenate([detections.boxes, scene_object_boxes(spec.scene)])
    found.append((detections, extractor.box_descriptors(picture, boxes)))
    with open(os.path.join(out_dir, "images", pool, f"{spec.key}.png"), "wb") as handle:
      handle.write(scenes.png_bytes(picture))
  # The projection runs once over the whole pool (fast in one BLAS call).
  features = extractor.project(np.concatenate([raw for _, raw in found]))
  images: list[PoolImage] = []
  start = 0
  for index, (spec, (detections, raw)) in enumerate(zip(specs, found, strict=True)):
    both = features[start:start + len(raw)]
    start += len(raw)
    detected = both[:len(detections.boxes)]
    # The object features are copied out, so releasing the detected features
    # frees the pool's whole feature array.
    images.append(PoolImage(pool, index, spec.split, spec.image_id, spec.key, spec.scene,
                            detections, detected, detected.mean(axis=0),
                            both[len(detections.boxes):].copy(), spec.twin, spec.change))
  return images


def scene_object_boxes(scene: scenes.Scene) -> np.ndarray:
  """float32 [num_objects, 4] exact object boxes, clipped to the picture like detections."""
  boxes = np.asarray([o.box for o in scene.objects], dtype=np.float32)
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, scene.width - 1)
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, scene.height - 1)
  return boxes


def write_lmdb(path: str, records: Iterable[dict]) -> int:
  """Write feature records with the release writer, then drop ``lock.mdb``.

  The lock file holds process-specific state; the readers open the
  environment read-only without locking, so the release does not need it,
  and leaving it out keeps the output byte-for-byte reproducible.
  """
  os.makedirs(path, exist_ok=True)
  written = write_feature_lmdb(path, records)
  lock = os.path.join(path, "lock.mdb")
  if os.path.exists(lock):
    os.remove(lock)
  return written


def detected_records(images: Sequence[PoolImage],
                     key: Callable[[PoolImage], int | str]) -> Iterable[dict]:
  """Release records of the detected boxes, keyed by ``key(image)``."""
  for image in images:
    if image.features is None:
      raise ValueError(f"features of {image.pool} image {image.key} were already released")
    yield {"image_id": key(image), "image_h": image.scene.height,
           "image_w": image.scene.width, "num_boxes": len(image.detections.boxes),
           "boxes": image.detections.boxes, "features": image.features}


def gt_record(image: PoolImage, key: int | str, object_order: Sequence[int]) -> dict:
  """A GT-box LMDB record: the given objects' exact boxes and features, in that order."""
  order = list(object_order)
  return {"image_id": key, "image_h": image.scene.height, "image_w": image.scene.width,
          "num_boxes": len(order), "boxes": scene_object_boxes(image.scene)[order],
          "features": image.object_features[order]}


def release_features(images: Sequence[PoolImage]) -> None:
  """Free the detected features once every LMDB of the pool is written."""
  for image in images:
    image.features = None


def split_images(images: Sequence[PoolImage], split: str) -> list[PoolImage]:
  """The images of one split, in pool order."""
  return [image for image in images if image.split == split]
