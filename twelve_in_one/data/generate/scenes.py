"""Synthetic scenes: coloured shapes on a plain background, and their scene graph.

A :class:`Scene` is a canvas size, a background and 3-6 non-overlapping
objects, each with a shape, a colour, a size class and a position. Every
scene is a pure function of its seed (:func:`sample_scene`), so the whole
release is reproducible. :func:`make_twin` derives a near-copy that differs in
one attribute of one object (as VQA v2's complementary images do): twins give
the retrieval task its hard negatives and make image memorisation useless.

The scene graph is plain geometry over the objects: :func:`left_of`,
:func:`above`, :func:`bigger`, :func:`count` and :func:`matching`. Relations
are only asserted when the gap is clear (``RELATION_GAP`` pixels), so every
generated answer is unambiguous in the rendered picture. Nothing here is ever
written into the region features; those are computed from the pixels.

:func:`render` draws a scene at twice its size and downsamples it by
averaging 2 x 2 pixel blocks, which anti-aliases the edges as a camera
would. The picture depends only on the scene, so the same scene always
gives the same pixels and the same PNG bytes (:func:`png_bytes`).
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from twelve_in_one.data.generate.layout import MAX_OBJECTS

SHAPES = ("circle", "square", "triangle", "star")
# Well separated hues, so a colour histogram of a box tells them apart.
COLOURS: Mapping[str, tuple[int, int, int]] = {
    "red": (215, 40, 45),
    "green": (40, 165, 70),
    "blue": (40, 90, 220),
    "yellow": (240, 205, 35),
    "purple": (140, 60, 175),
    "orange": (245, 130, 25),
}
SIZES = ("small", "large")
# Radius (half the extent) in pixels of each size class; the classes do not
# overlap, so "bigger than" is always visible.
RADIUS = {"small": (11.0, 15.0), "large": (22.0, 29.0)}
MIN_OBJECTS = 3
# Pixels between the centres of two objects before "left of"/"above" holds.
RELATION_GAP = 12.0
# Free pixels kept between objects and around the canvas border.
OBJECT_MARGIN = 6.0
CANVAS_SIZES = (192, 208, 224, 240, 256)


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One object: attributes, centre and radius (all in pixels)."""

  shape: str
  colour: str
  size: str
  cx: float
  cy: float
  radius: float
  # Per-object shade of the colour (a little variation, as real photos have).
  rgb: tuple[int, int, int]

  def outline(self) -> list[tuple[float, float]]:
    """The polygon that is drawn (circles: a 48-gon, for the box only)."""
    return shape_outline(self.shape, self.cx, self.cy, self.radius)

  @property
  def box(self) -> tuple[float, float, float, float]:
    """Tight box ``(x1, y1, x2, y2)`` of the drawn shape."""
    x1, y1, x2, y2 = _UNIT_EXTENT[self.shape]
    r = self.radius
    return self.cx + r * x1, self.cy + r * y1, self.cx + r * x2, self.cy + r * y2

  def phrase(self, *attributes: str) -> str:
    """Words for the given attributes in English order (size, colour, shape)."""
    words = [getattr(self, name) for name in ("size", "colour", "shape") if name in attributes]
    return " ".join(words)


@dataclasses.dataclass(frozen=True)
class Scene:
  """A canvas with a background, grey clutter strokes and coloured objects."""

  width: int
  height: int
  background_top: tuple[int, int, int]
  background_bottom: tuple[int, int, int]
  # Unsaturated line strokes (x1, y1, x2, y2, grey level, width) that give a
  # detector's distractor boxes something to look at.
  clutter: tuple[tuple[float, float, float, float, int, int], ...]
  objects: tuple[SceneObject, ...]


def shape_outline(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
  """Vertices of a shape of the given radius centred at ``(cx, cy)``."""
  if shape == "circle":
    steps = 48
    return [(cx + radius * math.cos(2 * math.pi * k / steps),
             cy + radius * math.sin(2 * math.pi * k / steps)) for k in range(steps)]
  if shape == "square":
    half = 0.86 * radius
    return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half),
            (cx - half, cy + half)]
  if shape == "triangle":
    return [(cx, cy - radius), (cx + 0.97 * radius, cy + 0.78 * radius),
            (cx - 0.97 * radius, cy + 0.78 * radius)]
  if shape == "star":
    points = []
    for k in range(10):
      r = radius if k % 2 == 0 else 0.45 * radius
      angle = -math.pi / 2 + math.pi * k / 5
      points.append((cx + r * math.cos(angle), cy + r * math.sin(angle) + 0.1 * radius))
    return points
  raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _extent(shape: str) -> tuple[float, float, float, float]:
  xs, ys = zip(*shape_outline(shape, 0.0, 0.0, 1.0))
  if shape == "circle":
    return -1.0, -1.0, 1.0, 1.0
  return min(xs), min(ys), max(xs), max(ys)


# Box of each shape at radius 1 around the origin.
_UNIT_EXTENT = {shape: _extent(shape) for shape in SHAPES}


def _shade(colour: str, rng: np.random.Generator) -> tuple[int, int, int]:
  base = np.asarray(COLOURS[colour], dtype=np.int64)
  return tuple(int(v) for v in np.clip(base + rng.integers(-14, 15, size=3), 0, 255))


def _fits(candidate: SceneObject, others: Sequence[SceneObject], width: int, height: int) -> bool:
  x1, y1, x2, y2 = candidate.box
  if x1 < OBJECT_MARGIN or y1 < OBJECT_MARGIN:
    return False
  if x2 > width - 1 - OBJECT_MARGIN or y2 > height - 1 - OBJECT_MARGIN:
    return False
  for other in others:
    ox1, oy1, ox2, oy2 = other.box
    if (x1 < ox2 + OBJECT_MARGIN and ox1 < x2 + OBJECT_MARGIN
        and y1 < oy2 + OBJECT_MARGIN and oy1 < y2 + OBJECT_MARGIN):
      return False
  return True


def _place(shape: str, colour: str, size: str, others: Sequence[SceneObject], width: int,
           height: int, rng: np.random.Generator, shade: tuple[int, int, int] | None = None,
           attempts: int = 60) -> SceneObject | None:
  """An object with the given attributes at a random free spot, or None."""
  low, high = RADIUS[size]
  for _ in range(attempts):
    radius = float(rng.uniform(low, high))
    candidate = SceneObject(shape, colour, size, float(rng.uniform(0, width)),
                            float(rng.uniform(0, height)), radius,
                            shade if shade is not None else _shade(colour, rng))
    if _fits(candidate, others, width, height):
      return candidate
  return None


def sample_scene(rng: np.random.Generator,
                 palette: Sequence[tuple[str, str]] | None = None) -> Scene:
  """Draw a random scene.

  Args:
    rng: the scene's own generator.
    palette: optional (shape, colour) types the objects are mostly drawn
      from (NLVR2 pairs share one, so that statements comparing the two
      images are often borderline).
  """
  width, height = (int(rng.choice(CANVAS_SIZES)) for _ in range(2))
  level = rng.integers(196, 236)
  tint = rng.integers(-10, 11, size=3)
  top = tuple(int(v) for v in np.clip(level + tint, 0, 255))
  bottom = tuple(int(v) for v in np.clip(level + tint - rng.integers(8, 24), 0, 255))
  clutter = []
  for _ in range(int(rng.integers(2, 6))):
    x1, y1 = rng.uniform(0, width), rng.uniform(0, height)
    angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(15, 60)
    clutter.append((float(x1), float(y1), float(x1 + length * math.cos(angle)),
                    float(y1 + length * math.sin(angle)), int(rng.integers(110, 175)),
                    int(rng.integers(1, 4))))
  objects: list[SceneObject] = []
  for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
    if palette is not None and rng.random() < 0.75:
      shape, colour = palette[int(rng.integers(len(palette)))]
    else:
      shape, colour = str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS)))
    placed = _place(shape, colour, str(rng.choice(SIZES)), objects, width, height, rng)
    if placed is not None:
      objects.append(placed)
  while len(objects) < MIN_OBJECTS:
    # A crowded canvas: small objects always find room.
    placed = _place(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), "small",
                    objects, width, height, rng, attempts=400)
    if placed is None:
      raise RuntimeError("could not place the minimum number of objects")
    objects.append(placed)
  return Scene(width, height, top, bottom, tuple(clutter), tuple(objects))


def make_twin(scene: Scene, rng: np.random.Generator) -> tuple[Scene, int, str]:
  """A copy of ``scene`` with one attribute of one object changed.

  Returns:
    ``(twin, index of the changed object, what changed)``, the change being
    ``"colour"``, ``"shape"``, ``"size"`` or ``"position"``.
  """
  for _ in range(50):
    index = int(rng.integers(len(scene.objects)))
    old = scene.objects[index]
    others = [o for k, o in enumerate(scene.objects) if k != index]
    change = str(rng.choice(("colour", "shape", "size", "position")))
    new: SceneObject | None
    if change == "colour":
      colour = str(rng.choice([c for c in COLOURS if c != old.colour]))
      new = dataclasses.replace(old, colour=colour, rgb=_shade(colour, rng))
    elif change == "shape":
      new = dataclasses.replace(old, shape=str(rng.choice([s for s in SHAPES if s != old.shape])))
    elif change == "size":
      size = "small" if old.size == "large" else "large"
      new = dataclasses.replace(old, size=size, radius=float(rng.uniform(*RADIUS[size])))
    else:
      new = _place(old.shape, old.colour, old.size, others, scene.width, scene.height, rng,
                   shade=old.rgb)
      if new is not None and abs(new.cx - old.cx) + abs(new.cy - old.cy) < 40:
        new = None
    if new is not None and _fits(new, others, scene.width, scene.height):
      objects = list(scene.objects)
      objects[index] = new
      return dataclasses.replace(scene, objects=tuple(objects)), index, change
  raise RuntimeError("could not derive a twin scene")


# ---------------------------------------------------------------------------
# The scene graph.

def left_of(a: SceneObject, b: SceneObject) -> bool:
  """``a`` is clearly left of ``b`` (centres at least RELATION_GAP apart)."""
  return a.cx + RELATION_GAP <= b.cx


def above(a: SceneObject, b: SceneObject) -> bool:
  """``a`` is clearly above ``b``."""
  return a.cy + RELATION_GAP <= b.cy


def bigger(a: SceneObject, b: SceneObject) -> bool:
  """``a`` is bigger than ``b`` (a large object next to a small one)."""
  return a.size == "large" and b.size == "small"


def horizontally_apart(a: SceneObject, b: SceneObject) -> bool:
  """One of the two is clearly left of the other."""
  return left_of(a, b) or left_of(b, a)


def vertically_apart(a: SceneObject, b: SceneObject) -> bool:
  """One of the two is clearly above the other."""
  return above(a, b) or above(b, a)


RELATIONS = {"left of": left_of, "right of": lambda a, b: left_of(b, a),
             "above": above, "below": lambda a, b: above(b, a)}


def matching(scene: Scene, **attributes: str) -> list[int]:
  """Indices of the objects whose attributes equal all the given ones."""
  return [k for k, o in enumerate(scene.objects)
          if all(getattr(o, name) == value for name, value in attributes.items())]


def count(scene: Scene, **attributes: str) -> int:
  """How many objects have all the given attributes."""
  return len(matching(scene, **attributes))


def side(scene: Scene, obj: SceneObject) -> str | None:
  """``"left"``/``"right"`` half of the picture, None near the middle."""
  margin = 0.08 * scene.width
  if obj.cx < scene.width / 2 - margin:
    return "left"
  if obj.cx > scene.width / 2 + margin:
    return "right"
  return None


def level(scene: Scene, obj: SceneObject) -> str | None:
  """``"top"``/``"bottom"`` half of the picture, None near the middle."""
  margin = 0.08 * scene.height
  if obj.cy < scene.height / 2 - margin:
    return "top"
  if obj.cy > scene.height / 2 + margin:
    return "bottom"
  return None


def scene_to_dict(scene: Scene) -> dict:
  """A JSON-ready description of a scene (for tests and debugging)."""
  return {"width": scene.width, "height": scene.height,
          "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size,
                       "box": [round(v, 2) for v in o.box]} for o in scene.objects]}


# ---------------------------------------------------------------------------
# Rendering.

SUPERSAMPLE = 2


def render(scene: Scene) -> Image.Image:
  """Draw ``scene`` as an RGB image of ``scene.width`` x ``scene.height`` pixels."""
  scale = SUPERSAMPLE
  width, height = scene.width * scale, scene.height * scale
  # Vertical background gradient.
  top = np.asarray(scene.background_top, dtype=np.float32)
  bottom = np.asarray(scene.background_bottom, dtype=np.float32)
  weights = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
  column = (top * (1 - weights) + bottom * weights).round().astype(np.uint8)
  # A one-pixel-wide gradient stretched sideways (fast in C).
  canvas = Image.fromarray(column, "RGB").resize((width, height), Image.Resampling.NEAREST)
  draw = ImageDraw.Draw(canvas)
  for x1, y1, x2, y2, grey, line_width in scene.clutter:
    draw.line([(x1 * scale, y1 * scale), (x2 * scale, y2 * scale)], fill=(grey, grey, grey),
              width=line_width * scale)
  for obj in scene.objects:
    if obj.shape == "circle":
      r = obj.radius * scale
      draw.ellipse([obj.cx * scale - r, obj.cy * scale - r, obj.cx * scale + r,
                    obj.cy * scale + r], fill=obj.rgb)
    else:
      draw.polygon([(x * scale, y * scale) for x, y in obj.outline()], fill=obj.rgb)
  return canvas.reduce(scale)


def png_bytes(image: Image.Image) -> bytes:
  """PNG encoding of ``image`` (deterministic: no timestamps or metadata).

  Fast compression: these flat-colour pictures stay small (~4 KB) anyway.
  """
  buffer = io.BytesIO()
  image.save(buffer, format="PNG", optimize=False, compress_level=1)
  return buffer.getvalue()
