"""Pictures of one prediction: the image with its boxes, and the co-attention map.

    size = visualize(prediction, "out.png", image="photo.jpg")   # (width, height) in pixels

Panels (a figure of `FIGURE_SIZE` pixels, `FIGURE_SIZE_NO_ATTENTION` without a map):

* the image, from a file when given (stretched to the stored image size, the frame of the
  region boxes), else a plain canvas of the stored size; grounding and pointing tasks draw the
  top regions (thin, with rank and score) and the chosen box (thick, green); the result
  (answers, label, alignment score) is written in the title;
* the co-attention heat overlay: each detected region's attention, averaged over the text's
  word pieces ([CLS], the task token and [SEP] left out), min-max normalised over the regions
  and painted over its box (`region_heat`); the whole-image region 0 is left out (it would only
  tint everything); low heat stays transparent so the image shows through;
* the co-attention matrix: text tokens × regions, the head-averaged text-to-image attention
  probabilities of the last co-attention block.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import io
import os
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from twelve_in_one import paths
from twelve_in_one.evaluate.predict import Prediction

DPI = 100
FIGURE_SIZE = (1400, 1000)
FIGURE_SIZE_NO_ATTENTION = (1400, 700)
CANVAS_COLOR = (0.93, 0.93, 0.93)
_SPECIAL = ("[CLS]", "[SEP]")


def load_image(image: Any, width: int, height: int) -> np.ndarray:
  """An RGB array from a path or an array; a plain canvas of width × height when None."""
  if image is None:
    return np.broadcast_to(np.asarray(CANVAS_COLOR, np.float32), (height, width, 3)).copy()
  if isinstance(image, (str, os.PathLike)):
    from PIL import Image
    location = paths.as_path(image)   # epath: the picture may be in a gs:// bucket
    if not location.is_file():
      raise FileNotFoundError(f"{os.fspath(image)}: no such image file")
    with location.open("rb") as file, Image.open(io.BytesIO(file.read())) as opened:
      return np.asarray(opened.convert("RGB"))
  array = np.asarray(image)
  if array.ndim != 3 or array.shape[2] not in (3, 4):
    raise ValueError(f"image array has shape {list(array.shape)}; expected [H, W, 3 or 4]")
  return array


def region_heat(attention: np.ndarray, tokens: list[str], boxes: np.ndarray, width: int,
                height: int, cells: int = 200) -> np.ndarray:
  """[h, w] heat in [0, 1]: each detected region's mean attention over the word pieces.

  The weights are min-max normalised over the detected regions and every cell takes the
  highest weight among the boxes that cover it. A sum would let overlapping boxes outshine the
  region the text actually attends to.
  """
  rows = [i for i, token in enumerate(tokens)
          if token not in _SPECIAL and not (token.startswith("<TASK") and token.endswith(">"))]
  weights = attention[rows].mean(axis=0) if rows else attention.mean(axis=0)
  weights = weights[1:boxes.shape[0]]            # region 0 is the whole image
  scale = cells / max(width, height)
  grid_h, grid_w = max(1, round(height * scale)), max(1, round(width * scale))
  heat = np.zeros((grid_h, grid_w), np.float64)
  if weights.size == 0:
    return heat
  spread = weights.max() - weights.min()
  normalised = (weights - weights.min()) / spread if spread > 0 else np.ones_like(weights)
  for weight, box in zip(normalised, boxes[1:]):
    x1, y1, x2, y2 = (box[:4] * scale).tolist()
    cells_y = slice(int(y1), max(int(np.ceil(y2)), int(y1) + 1))
    cells_x = slice(int(x1), max(int(np.ceil(x2)), int(x1) + 1))
    heat[cells_y, cells_x] = np.maximum(heat[cells_y, cells_x], weight)
  return heat


def _result_text(prediction: Prediction) -> str:
  result = prediction.result
  if "answers" in result:
    return "answers: " + ", ".join(f"{a['answer']} ({a['probability']:.2f})"
                                   for a in result["answers"][:3])
  if "prediction" in result:
    return f"{result['prediction']} ({max(result['probabilities'].values()):.2f})"
  if "alignment_score" in result:
    return f"alignment score {result['alignment_score']:.3f}"
  if "box" in result:
    return f"chosen region {result['region']} (score {result['score']:.2f})"
  return ""


def _draw_regions(axes, prediction: Prediction, plain_canvas: bool) -> None:
  result = prediction.result
  if "top_regions" not in result:
    if plain_canvas:   # no picture: the detected boxes show where the regions are
      for x1, y1, x2, y2 in prediction.images[0].boxes_pixels5[1:, :4].tolist():
        axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=0.8,
                                 edgecolor="grey"))
    if "answers" in result:
      lines = [f"{a['answer']}  {a['probability']:.3f}" for a in result["answers"]]
      axes.text(0.02, 0.98, "\n".join(lines), transform=axes.transAxes, va="top", fontsize=10,
                family="monospace", bbox={"facecolor": "white", "alpha": 0.85, "pad": 4})
    return
  for rank, region in enumerate(result["top_regions"][1:], start=2):
    x1, y1, x2, y2 = region["box"]
    axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=1.2,
                             edgecolor="tab:orange", alpha=0.8))
    axes.text(x1, y1, f"#{rank} {region['score']:.2f}", fontsize=8, color="white",
              va="top", bbox={"facecolor": "tab:orange", "alpha": 0.7, "pad": 1,
                                 "linewidth": 0})
  x1, y1, x2, y2 = result["box"]
  axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=3.0,
                           edgecolor="limegreen"))
  axes.text(x1, y1, f"#1 {result['score']:.2f}", fontsize=10, color="black", va="top",
            bbox={"facecolor": "limegreen", "alpha": 0.9, "pad": 1, "linewidth": 0})


def _show_image(axes, pixels: np.ndarray, width: int, height: int, title: str) -> None:
  axes.imshow(pixels, extent=(0, width, height, 0), interpolation="bilinear")
  axes.set_xlim(0, width)
  axes.set_ylim(height, 0)
  axes.set_title(title, fontsize=11)
  axes.set_xticks([])
  axes.set_yticks([])


def visualize(prediction: Prediction, out_path: str, image: Any = None) -> tuple[int, int]:
  """Draws the prediction into a PNG at `out_path`; returns its (width, height) in pixels.

  `image` is a path or an RGB array of the (first) image; None draws a plain canvas of the
  stored image size. Both paths may be local or `gs://`.
  """
  first = prediction.images[0]
  width, height = first.image_w, first.image_h
  pixels = load_image(image, width, height)
  size = FIGURE_SIZE if prediction.attention is not None else FIGURE_SIZE_NO_ATTENTION
  figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
  FigureCanvasAgg(figure)
  figure.suptitle(f"{prediction.task}: \"{prediction.text}\"", fontsize=13)
  if prediction.attention is None:
    grid = figure.add_gridspec(1, 1, left=0.05, right=0.95, top=0.9, bottom=0.04)
    image_axes = figure.add_subplot(grid[0, 0])
  else:
    grid = figure.add_gridspec(2, 2, height_ratios=(3, 2), left=0.08, right=0.93, top=0.92,
                               bottom=0.06, hspace=0.25, wspace=0.08)
    image_axes = figure.add_subplot(grid[0, 0])
  title = _result_text(prediction)
  if len(prediction.images) > 1:   # NLVR2: the picture and the map are of the first image
    title += f"  [image 1 of {len(prediction.images)}: {first.image_id}]"
  _show_image(image_axes, pixels, width, height, title)
  _draw_regions(image_axes, prediction, plain_canvas=image is None)

  if prediction.attention is not None:
    attention = np.asarray(prediction.attention, np.float64)
    regions = min(first.num_boxes, attention.shape[1])
    heat_axes = figure.add_subplot(grid[0, 1])
    _show_image(heat_axes, pixels, width, height, "co-attention over regions (word pieces)")
    heat = region_heat(attention[:, :regions], prediction.tokens, first.boxes_pixels5[:regions],
                       width, height)
    overlay = matplotlib.colormaps["inferno"](heat)
    overlay[..., 3] = 0.8 * heat          # low attention stays transparent
    heat_axes.imshow(overlay, extent=(0, width, height, 0), interpolation="nearest")
    matrix_axes = figure.add_subplot(grid[1, :])
    shown = matrix_axes.imshow(attention[:, :regions], aspect="auto", cmap="viridis",
                               interpolation="nearest")
    matrix_axes.set_yticks(range(len(prediction.tokens)))
    matrix_axes.set_yticklabels(prediction.tokens, fontsize=8)
    matrix_axes.set_xticks(range(regions))
    matrix_axes.set_xticklabels([str(i) for i in range(regions)], fontsize=7)
    matrix_axes.set_xlabel("region (0 = whole image)")
    matrix_axes.set_title("text → image attention, last co-attention block, mean over heads",
                          fontsize=11)
    figure.colorbar(shown, ax=matrix_axes, fraction=0.03, pad=0.01)
  # Rendered in memory and written whole, locally or to gs://; the suffix names the format
  # (png, jpg, svg, pdf), as `savefig(path)` would infer it.
  suffix = os.path.splitext(os.fspath(out_path))[1].lstrip(".").lower()
  buffer = io.BytesIO()
  figure.savefig(buffer, dpi=DPI, format=suffix or "png")
  paths.write_bytes_atomically(out_path, buffer.getvalue())
  return size
