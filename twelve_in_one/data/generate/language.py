"""Words for scenes: unique descriptions of objects, numbers and plurals.

:func:`descriptions` lists every way of naming one object so that it is the
only object of its scene that fits: by its attributes ("red circle", "large
circle", "large red circle"), by its position among look-alikes ("red circle
on the left": the leftmost red circle, clearly apart from the others), or by
a relation to another uniquely named object ("circle above the blue star").
Question, caption and expression generators pick among these, excluding the
attribute a question asks about, so that every question has exactly one
referent and one true answer.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence

import numpy as np

from twelve_in_one.data.generate.scenes import RELATIONS, Scene, SceneObject

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six")
# Attribute combinations that can name an object, shortest first.
_ATTRIBUTE_SETS = (("shape",), ("colour",), ("size",), ("colour", "shape"), ("size", "shape"),
                   ("size", "colour"), ("size", "colour", "shape"))
_POSITION_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top",
                   "bottom": "at the bottom"}


@dataclasses.dataclass(frozen=True)
class Description:
  """One way of naming an object.

  Attributes:
    text: the noun phrase without article, e.g. ``"red circle on the left"``.
    attributes: the object attributes the phrase names.
    spatial: whether it uses position words (left/right/top/bottom, or a
      relation to another object).
  """

  text: str
  attributes: tuple[str, ...]
  spatial: bool


def a(phrase: str) -> str:
  """``phrase`` with its indefinite article ("a circle", "an orange star")."""
  return f"{'an' if phrase[:1].lower() in 'aeiou' else 'a'} {phrase}"


def plural(shape: str) -> str:
  """Plural of a shape noun (all regular)."""
  return shape + "s"


def noun_phrase(obj: SceneObject, attributes: Sequence[str]) -> str:
  """The object's attributes in English order; "object" when the shape is left out."""
  words = [getattr(obj, name) for name in ("size", "colour") if name in attributes]
  words.append(obj.shape if "shape" in attributes else "object")
  return " ".join(words)


def look_alikes(scene: Scene, index: int, attributes: Sequence[str]) -> list[int]:
  """Indices of the objects sharing the given attributes with object ``index`` (incl. it)."""
  key = _attribute_getter(tuple(attributes))
  target = key(scene.objects[index])
  return [k for k, o in enumerate(scene.objects) if key(o) == target]


@functools.lru_cache(maxsize=None)
def _attribute_getter(attributes: tuple[str, ...]):
  return lambda obj: tuple(getattr(obj, name) for name in attributes)


def _extreme(scene: Scene, index: int, group: Sequence[int]) -> list[str]:
  """Position words that single out ``index`` within ``group`` (clear gaps only)."""
  target = scene.objects[index]
  others = [scene.objects[k] for k in group if k != index]
  words = []
  for word, relation in (("left", "left of"), ("right", "right of"), ("top", "above"),
                         ("bottom", "below")):
    if all(RELATIONS[relation](target, other) for other in others):
      words.append(word)
  return words


def descriptions(scene: Scene, index: int, *, exclude: Sequence[str] = (),
                 spatial: bool = True, relational: bool = False) -> list[Description]:
  """Every unique description of object ``index`` (see :func:`_descriptions`)."""
  return list(_descriptions(scene, index, tuple(exclude), spatial, relational))


# Generators ask about the same objects many times; scenes are immutable.
@functools.lru_cache(maxsize=65536)
def _descriptions(scene: Scene, index: int, exclude: tuple[str, ...], spatial: bool,
                  relational: bool) -> tuple[Description, ...]:
  """Every unique description of object ``index``.

  Args:
    scene: the scene.
    index: the object to describe.
    exclude: attributes the description must not mention (the one a
      question asks about).
    spatial: allow "on the left"-style position words among look-alikes.
    relational: also allow "<noun> <relation> the <other object>" phrases
      (RefCOCOg-style, longer).

  Returns:
    Descriptions that fit object ``index`` and no other object.
  """
  target = scene.objects[index]
  allowed = [attrs for attrs in _ATTRIBUTE_SETS if not set(attrs) & set(exclude)]
  found: list[Description] = []
  for attributes in allowed:
    group = look_alikes(scene, index, attributes)
    if len(group) == 1:
      found.append(Description(noun_phrase(target, attributes), attributes, False))
    elif spatial:
      for word in _extreme(scene, index, group):
        found.append(Description(f"{noun_phrase(target, attributes)} {_POSITION_WORDS[word]}",
                                 attributes, True))
  if relational:
    for attributes in allowed:
      group = look_alikes(scene, index, attributes)
      for anchor in range(len(scene.objects)):
        if anchor in group:
          continue
        anchor_names = [d.text for d in descriptions(scene, anchor, spatial=False)]
        if not anchor_names:
          continue
        for relation, holds in RELATIONS.items():
          fits = [k for k in group if holds(scene.objects[k], scene.objects[anchor])]
          if fits == [index]:
            phrase = "to the left of" if relation == "left of" else (
                "to the right of" if relation == "right of" else relation)
            found.append(Description(
                f"{noun_phrase(target, attributes)} {phrase} the {anchor_names[0]}",
                attributes + ("relation",), True))
  return tuple(found)


def pick(rng: np.random.Generator, options: Sequence[Description],
         prefer_short: float = 0.5) -> Description | None:
  """One description: the shortest with probability ``prefer_short``, else any."""
  if not options:
    return None
  if rng.random() < prefer_short:
    return min(options, key=lambda d: (len(d.text.split()), d.text))
  return options[int(rng.integers(len(options)))]


def number_word(n: int) -> str:
  """``0 -> "no"``, ``1 -> "one"``, ... (digits beyond six)."""
  return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def object_types(scene: Scene) -> set[tuple[str, str]]:
  """The (colour, shape) types present in the scene."""
  return {(o.colour, o.shape) for o in scene.objects}


def pairs(n: int) -> list[tuple[int, int]]:
  """All ordered pairs of distinct indices below ``n``."""
  return list(itertools.permutations(range(n), 2))
