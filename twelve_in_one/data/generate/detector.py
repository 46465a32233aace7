"""Detector-like region boxes for a scene: a simulated top-N detection list.

The release's boxes come from a Faster R-CNN that keeps its top 100 boxes by
confidence. We imitate what such a list looks like,
without running a detector:

* every object gets one well-placed box (its tight box, each side moved by
  up to 6% of the object size) with a high confidence in [0.6, 0.99];
* objects also get looser duplicates (shifted and rescaled boxes, as NMS
  leaves them), with confidences in [0.15, 0.8];
* distractor boxes cover background clutter, parts of objects or pairs of
  neighbouring objects, with confidences in [0.01, 0.6].

Confidences overlap between the kinds, so the list order is not a label; the
top-N always contains every object's main box (a detector that found every
object), and the rest is filled by confidence. Boxes are clipped to
``[0, W-1] x [0, H-1]`` as the detector clips them. Which box came from which
object is returned for the sample pictures only; it is never written out.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from twelve_in_one.data.generate.scenes import Scene


@dataclasses.dataclass(frozen=True)
class Detections:
  """One image's top-N boxes.

  Attributes:
    boxes: float32 [N, 4] x1, y1, x2, y2 in pixels, by decreasing confidence.
    confidences: float32 [N], decreasing.
    object_index: int [N], the object a box was derived from, -1 for
      background distractors (for pictures and tests; never written).
  """

  boxes: np.ndarray
  confidences: np.ndarray
  object_index: np.ndarray


def _clip(box: np.ndarray, scene: Scene) -> np.ndarray:
  x1, y1, x2, y2 = box
  x1, x2 = np.clip([x1, x2], 0, scene.width - 1)
  y1, y2 = np.clip([y1, y2], 0, scene.height - 1)
  # Keep at least 2 pixels on each side, like a detector's smallest anchor.
  x2, y2 = max(x2, min(x1 + 2, scene.width - 1)), max(y2, min(y1 + 2, scene.height - 1))
  return np.asarray([x1, y1, x2, y2], dtype=np.float64)


def _perturbed(box: tuple[float, ...], fraction: float, rng: np.random.Generator) -> np.ndarray:
  x1, y1, x2, y2 = box
  extent = np.asarray([x2 - x1, y2 - y1, x2 - x1, y2 - y1])
  return np.asarray(box) + rng.uniform(-fraction, fraction, size=4) * extent


def _duplicate(box: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
  """A looser box around an object: shifted by up to 30% and rescaled 0.7-1.6x."""
  x1, y1, x2, y2 = box
  width, height = x2 - x1, y2 - y1
  cx = (x1 + x2) / 2 + rng.uniform(-0.3, 0.3) * width
  cy = (y1 + y2) / 2 + rng.uniform(-0.3, 0.3) * height
  scale_x, scale_y = rng.uniform(0.7, 1.6, size=2)
  return np.asarray([cx - width * scale_x / 2, cy - height * scale_y / 2,
                     cx + width * scale_x / 2, cy + height * scale_y / 2])


def detect(scene: Scene, num_regions: int, rng: np.random.Generator) -> Detections:
  """Simulate a detector's top-``num_regions`` boxes for ``scene``.

  Raises:
    ValueError: ``num_regions`` is smaller than the number of objects.
  """
  objects = scene.objects
  if num_regions < len(objects):
    raise ValueError(f"num_regions {num_regions} < {len(objects)} objects in the scene")
  main = [(_clip(_perturbed(o.box, 0.06, rng), scene), float(rng.uniform(0.6, 0.99)), k)
          for k, o in enumerate(objects)]
  extra: list[tuple[np.ndarray, float, int]] = []
  for k, o in enumerate(objects):
    for _ in range(int(rng.integers(1, 3))):
      extra.append((_clip(_duplicate(o.box, rng), scene), float(rng.uniform(0.15, 0.8)), k))
  # Enough distractors to fill any N (up to the release's 100).
  num_distractors = max(8, num_regions - len(main) - len(extra) + 8)
  for _ in range(num_distractors):
    kind = rng.random()
    if kind < 0.25 and len(objects) >= 2:
      a, b = rng.choice(len(objects), size=2, replace=False)
      box_a, box_b = objects[int(a)].box, objects[int(b)].box
      union = np.asarray([min(box_a[0], box_b[0]), min(box_a[1], box_b[1]),
                          max(box_a[2], box_b[2]), max(box_a[3], box_b[3])])
      extra.append((_clip(union, scene), float(rng.uniform(0.05, 0.5)), -1))
    elif kind < 0.45:
      # Part of an object: a detector's box on one corner of it.
      o = objects[int(rng.integers(len(objects)))]
      x1, y1, x2, y2 = o.box
      fx, fy = rng.uniform(0, 0.5, size=2)
      part = np.asarray([x1 + fx * (x2 - x1), y1 + fy * (y2 - y1),
                         x1 + (fx + 0.5) * (x2 - x1), y1 + (fy + 0.5) * (y2 - y1)])
      extra.append((_clip(part, scene), float(rng.uniform(0.05, 0.55)), -1))
    else:
      if scene.clutter and rng.random() < 0.6:
        x1, y1, x2, y2, _, _ = scene.clutter[int(rng.integers(len(scene.clutter)))]
        stroke = np.asarray([min(x1, x2) - 4, min(y1, y2) - 4, max(x1, x2) + 4, max(y1, y2) + 4])
        box = stroke + rng.uniform(-6, 6, size=4)
      else:
        width, height = rng.uniform(16, 0.6 * scene.width), rng.uniform(16, 0.6 * scene.height)
        x1, y1 = rng.uniform(0, scene.width - width), rng.uniform(0, scene.height - height)
        box = np.asarray([x1, y1, x1 + width, y1 + height])
      extra.append((_clip(box, scene), float(rng.uniform(0.01, 0.6)), -1))
  extra.sort(key=lambda item: -item[1])
  kept = main + extra[:num_regions - len(main)]
  kept.sort(key=lambda item: -item[1])
  return Detections(
      boxes=np.stack([box for box, _, _ in kept]).astype(np.float32),
      confidences=np.asarray([conf for _, conf, _ in kept], dtype=np.float32),
      object_index=np.asarray([index for _, _, index in kept], dtype=np.int64))


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
  """IoU of each row of ``boxes`` [N, 4] with ``box`` [4], with the official +1 convention.

  The official grounding targets (``iou`` in the RefCOCO dataset code)
  count pixels inclusively, so a box ``x1..x2`` is ``x2 - x1 + 1`` wide.
  """
  boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
  box = np.asarray(box, dtype=np.float64)
  inter_w = np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1
  inter_h = np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1
  inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
  area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
  area_box = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
  return inter / (area + area_box - inter)
