"""The fixed region-feature extractor: pixels inside a box -> a 2048-d vector.

It stands in for the release's Faster R-CNN ``fc6`` features (reference
section 4.1): a deterministic function of the pixels inside each box, with
the release's width of 2048, non-negative like a post-ReLU ``fc6``. It knows
nothing of the scene graph: shape, colour and size have to be recovered from
the pixels by whoever uses the features.

For each box:

1. The box is cut out of the picture and resampled (bilinear) to
   ``CROP`` x ``CROP`` pixels, RGB scaled to [0, 1].
2. A 209-d descriptor is computed from that crop, in eight blocks:

   ===========================  ====  ===========================================
   block                        dims  what it captures
   ===========================  ====  ===========================================
   RGB joint histogram          64    4 x 4 x 4 bins, fraction of pixels
   hue histogram                12    weighted by saturation x value
   saturation histogram         4     fraction of pixels
   value (brightness) histogram 4     fraction of pixels
   opponent colour statistics   6     mean and std of O1, O2, O3
   spatial pyramid of colour    63    mean RGB over 1x1, 2x2 and 4x4 cells
   gradient orientations        40    8 signed bins, whole crop + 2x2 cells,
                                      magnitude-weighted (HOG-like)
   saturation layout            16    mean saturation over 4x4 cells (a soft
                                      silhouette of coloured pixels)
   ===========================  ====  ===========================================

   Each block is scaled to unit L2 norm, so no block dominates.
3. A fixed random projection maps the descriptor to 2048 dimensions:
   ``relu(d @ P + b) * OUTPUT_SCALE`` with ``P`` [209, 2048] drawn from
   N(0, 1/209) and ``b`` from U(-0.1, 0.1), both from
   ``numpy.random.default_rng(PROJECTION_SEED)``, computed in float32. The
   seed is a constant, not the generator's seed, so releases generated with
   different seeds share one feature space.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

FEATURE_DIM = 2048
CROP = 24
PROJECTION_SEED = 12_2048
OUTPUT_SCALE = 2.0
_HUE_BINS, _LEVEL_BINS = 12, 4
RAW_DIM = 64 + _HUE_BINS + 2 * _LEVEL_BINS + 6 + 63 + 40 + 16


@functools.lru_cache(maxsize=1)
def projection() -> tuple[np.ndarray, np.ndarray]:
  """The fixed projection ``(P [RAW_DIM, 2048], b [2048])`` (float32)."""
  rng = np.random.default_rng(PROJECTION_SEED)
  weights = rng.standard_normal((RAW_DIM, FEATURE_DIM)) / np.sqrt(RAW_DIM)
  bias = rng.uniform(-0.1, 0.1, size=FEATURE_DIM)
  return weights.astype(np.float32), bias.astype(np.float32)


def crops(image: Image.Image, boxes: np.ndarray) -> np.ndarray:
  """The pixels of each box resampled to float64 [N, CROP, CROP, 3] in [0, 1]."""
  out = np.empty((len(boxes), CROP, CROP, 3), dtype=np.float64)
  for row, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.float64)):
    # PIL's box is exclusive on the right; the detector's boxes are inclusive.
    patch = image.resize((CROP, CROP), Image.Resampling.BILINEAR,
                         box=(float(x1), float(y1), float(x2) + 1, float(y2) + 1))
    out[row] = np.asarray(patch, dtype=np.float64) / 255.0
  return out


def _count_bins(index: np.ndarray, bins: int, weights: np.ndarray | None = None) -> np.ndarray:
  """Row-wise (weighted) counts of integer bin indices [N, ...] in [0, bins): [N, bins]."""
  n = index.shape[0]
  flat = index.reshape(n, -1) + np.arange(n)[:, None] * bins
  w = np.ones(flat.shape, dtype=np.float64) if weights is None else weights.reshape(n, -1)
  return np.bincount(flat.ravel(), weights=w.ravel(), minlength=n * bins).reshape(n, bins)


def _histogram(values: np.ndarray, bins: int, weights: np.ndarray | None = None) -> np.ndarray:
  """Row-wise histogram of values in [0, 1] over ``bins`` equal bins: [N, bins]."""
  index = np.minimum((values * bins).astype(np.int64), bins - 1)
  return _count_bins(index, bins, weights)


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Hue in [0, 1), saturation and value of RGB pixels in [0, 1]."""
  maximum, minimum = rgb.max(axis=-1), rgb.min(axis=-1)
  delta = maximum - minimum
  safe = np.where(delta > 1e-9, delta, 1.0)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  hue = np.where(maximum == r, ((g - b) / safe) % 6,
                 np.where(maximum == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6.0
  hue = np.where(delta > 1e-9, hue, 0.0) % 1.0
  saturation = np.where(maximum > 1e-9, delta / np.where(maximum > 1e-9, maximum, 1.0), 0.0)
  return hue, saturation, maximum


def _cell_means(values: np.ndarray, cells: int) -> np.ndarray:
  """Mean of [N, CROP, CROP, C] over a cells x cells grid: [N, cells * cells * C]."""
  n, size, _, channels = values.shape
  step = size // cells
  grid = values.reshape(n, cells, step, cells, step, channels).mean(axis=(2, 4))
  return grid.reshape(n, -1)


def _orientation_histograms(gray: np.ndarray) -> np.ndarray:
  """8-bin signed gradient-orientation histograms, whole crop + 2x2 cells: [N, 40]."""
  gx = np.zeros_like(gray)
  gy = np.zeros_like(gray)
  gx[:, :, 1:-1] = gray[:, :, 2:] - gray[:, :, :-2]
  gy[:, 1:-1, :] = gray[:, 2:, :] - gray[:, :-2, :]
  magnitude = np.hypot(gx, gy)
  angle = (np.arctan2(gy, gx) / (2 * np.pi)) % 1.0
  blocks = [_histogram(angle, 8, magnitude)]
  half = gray.shape[1] // 2
  for rows in (slice(0, half), slice(half, None)):
    for cols in (slice(0, half), slice(half, None)):
      blocks.append(_histogram(np.ascontiguousarray(angle[:, rows, cols]), 8,
                               np.ascontiguousarray(magnitude[:, rows, cols])))
  return np.concatenate([_unit(block) for block in blocks], axis=1)


def _unit(block: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(block, axis=1, keepdims=True)
  return block / np.maximum(norm, 1e-9)


def descriptors(pixels: np.ndarray) -> np.ndarray:
  """The 209-d descriptor of each crop [N, CROP, CROP, 3] (see the module docstring)."""
  n = pixels.shape[0]
  quantised = np.minimum((pixels * 4).astype(np.int64), 3)
  joint = quantised[..., 0] * 16 + quantised[..., 1] * 4 + quantised[..., 2]
  rgb_hist = _count_bins(joint, 64)
  hue, saturation, value = _hsv(pixels)
  hue_hist = _histogram(hue, _HUE_BINS, saturation * value)
  saturation_hist = _histogram(saturation, _LEVEL_BINS)
  value_hist = _histogram(value, _LEVEL_BINS)
  r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
  opponent = np.stack([(r - g) / np.sqrt(2), (r + g - 2 * b) / np.sqrt(6),
                       (r + g + b) / np.sqrt(3)], axis=-1).reshape(n, -1, 3)
  opponent_stats = np.concatenate([opponent.mean(axis=1), opponent.std(axis=1)], axis=1)
  pyramid = np.concatenate([_cell_means(pixels, cells) for cells in (1, 2, 4)], axis=1)
  gradients = _orientation_histograms(pixels.mean(axis=-1))
  layout = _cell_means(saturation[..., None], 4)
  blocks = [rgb_hist, hue_hist, saturation_hist, value_hist, opponent_stats, pyramid,
            gradients, layout]
  return np.concatenate([_unit(block) for block in blocks], axis=1)


def box_descriptors(image: Image.Image, boxes: np.ndarray) -> np.ndarray:
  """The descriptors float64 [N, RAW_DIM] of ``boxes`` [N, 4] (steps 1 and 2)."""
  boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
  if len(boxes) == 0:
    return np.zeros((0, RAW_DIM), dtype=np.float64)
  return descriptors(crops(image, boxes))


def project(raw: np.ndarray, chunk: int = 8192) -> np.ndarray:
  """Step 3: float32 [N, 2048] features of descriptors [N, RAW_DIM].

  Callers should project many boxes at once: one BLAS call on a few rows
  costs about as much as on thousands. The same rows in the same chunks
  give the same bytes; another chunking may differ in the last float32 bit.
  """
  weights, bias = projection()
  out = np.empty((len(raw), FEATURE_DIM), dtype=np.float32)
  for start in range(0, len(raw), chunk):
    part = raw[start:start + chunk].astype(np.float32) @ weights + bias
    out[start:start + chunk] = np.maximum(part, 0.0) * OUTPUT_SCALE
  return out


def extract(image: Image.Image, boxes: np.ndarray) -> np.ndarray:
  """Region features float32 [N, 2048] of ``boxes`` [N, 4] (x1, y1, x2, y2 pixels)."""
  return project(box_descriptors(image, boxes))
