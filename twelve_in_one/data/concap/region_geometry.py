"""The official box processing of a Conceptual Captions record (`BertPreprocessBatch.__call__`
and `ConceptCapLoaderTrain.__iter__`), done once per image when the corpus is prepared, plus
the global region that is computed after masking.

* **Locations.** Boxes go into a float32 array; the 5th coordinate is the box area
  `(x2 - x1) * (y2 - y1) / (W * H)`, computed from the pixel corners, and the corners are then
  divided by the image width and height. The global region 0 has location `[0, 0, 1, 1, 1]`.
* **Overlaps.** The pairwise IoU of the pixel boxes in the "+1 pixel" convention of the
  official `iou` (areas and intersections count pixels inclusively), in the boxes' own dtype.
  Only `IoU > 0.4` is ever used, so `overlap_flags` keeps that boolean matrix.
* **Global region.** Region 0's feature is the sum of the (masked) region features divided by
  the number of regions that no masked region overlaps (at least 1), as
  `ConceptCapLoaderTrain.__iter__` computes it from `masked_label`: the sum keeps the features
  of overlapping regions that were not zeroed, the count leaves them out.
"""

from __future__ import annotations

import numpy as np

# `random_region` flags every region whose IoU with a masked one exceeds this.
OVERLAP_THRESHOLD = 0.4
GLOBAL_LOCATION = np.array([0, 0, 1, 1, 1], np.float32)


def iou_matrix(boxes: np.ndarray) -> np.ndarray:
  """The official pairwise `iou(boxes, boxes)`: [N, N], in the dtype of `boxes` [N, 4]."""
  boxes = np.asarray(boxes)
  areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
  widths = (np.minimum(boxes[:, None, 2], boxes[None, :, 2])
            - np.maximum(boxes[:, None, 0], boxes[None, :, 0]) + 1)
  heights = (np.minimum(boxes[:, None, 3], boxes[None, :, 3])
             - np.maximum(boxes[:, None, 1], boxes[None, :, 1]) + 1)
  widths[widths < 0] = 0
  heights[heights < 0] = 0
  union = areas[:, None] + areas[None, :] - widths * heights
  return widths * heights / union


def overlap_flags(boxes: np.ndarray) -> np.ndarray:
  """bool [N, N]: `IoU > 0.4` between the pixel boxes [N, 4] (the diagonal is True)."""
  return iou_matrix(boxes) > OVERLAP_THRESHOLD


def normalized_locations(boxes: np.ndarray, image_w: int, image_h: int) -> np.ndarray:
  """float32 [N, 5]: `[x1/W, y1/H, x2/W, y2/H, area/(W*H)]`, in the official float32 order."""
  location = np.zeros((len(boxes), 5), np.float32)
  location[:, :4] = boxes
  width, height = float(image_w), float(image_h)
  location[:, 4] = ((location[:, 3] - location[:, 1]) * (location[:, 2] - location[:, 0])
                    / np.float32(width * height))
  location[:, 0] /= np.float32(width)
  location[:, 1] /= np.float32(height)
  location[:, 2] /= np.float32(width)
  location[:, 3] /= np.float32(height)
  return location


def global_feature(features: np.ndarray, flagged: np.ndarray) -> np.ndarray:
  """Region 0's feature: sum of `features` [N, F] over [N] / max(#not `flagged`, 1), float32.

  The official loader sums in float32 and divides by an integer count in float64 before
  casting back; the division gives the same float32 either way (one correctly rounded
  quotient), so this divides once in float64 as it does.
  """
  count = max(int(np.count_nonzero(~np.asarray(flagged, bool))), 1)
  total = np.sum(np.asarray(features, np.float32), axis=0, dtype=np.float32)
  return (total / np.float64(count)).astype(np.float32)
