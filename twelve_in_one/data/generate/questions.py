"""Question templates of the three QA datasets: VQA-, Visual Genome- and GQA-style.

Each ``*_candidates(scene, rng)`` function lists questions that are true of
the scene as ``(kind, question, answer)``: every referent is named uniquely
(see :mod:`~twelve_in_one.data.generate.language`) and every answer is read
off the scene graph. The styles differ as the real datasets do:

* VQA: open questions about colour, shape and counts, and yes/no questions
  (existence, attribute checks, spatial relations);
* Visual Genome QA: "what/where/how many" questions, no yes/no;
* GQA: compositional questions: relations to other objects, comparisons,
  choices between two answers, and logical conjunctions.

Which of the candidates become examples is decided by
:func:`~twelve_in_one.data.generate.balance.balanced_sample`.
"""

from __future__ import annotations

import re

import numpy as np

from twelve_in_one.data.generate import language
from twelve_in_one.data.generate.scenes import (
    COLOURS,
    RELATIONS,
    SHAPES,
    Scene,
    above,
    bigger,
    count,
    horizontally_apart,
    left_of,
    level,
    side,
    vertically_apart,
)

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
# The VQA answer vocabulary, shared with VG-QA (the official VG-QA targets
# live in VQA's label space).
VQA_ANSWERS = ("yes", "no", *(str(n) for n in range(7)), *COLOURS, *SHAPES, *QUADRANTS)
GQA_ANSWERS = ("yes", "no", "left", "right", *COLOURS, *SHAPES)

Candidates = list[tuple[str, str, str]]


def word_pieces(text: str) -> int:
  """Word pieces of ``text`` for the BERT vocabulary (every word here is one piece)."""
  return len(re.findall(r"\w+|[^\w\s]", text))


def _named(scene: Scene, index: int, rng: np.random.Generator, exclude: tuple[str, ...] = (),
           spatial: bool = True) -> str | None:
  found = language.pick(rng, language.descriptions(scene, index, exclude=exclude,
                                                   spatial=spatial))
  return found.text if found else None


def _names(scene: Scene, index: int, rng: np.random.Generator, limit: int,
           exclude: tuple[str, ...] = (), spatial: bool = True) -> list[str]:
  """Up to ``limit`` different unique descriptions of object ``index``."""
  found = language.descriptions(scene, index, exclude=exclude, spatial=spatial)
  return [found[int(k)].text for k in rng.permutation(len(found))[:limit]]


def _count_questions(scene: Scene, rng: np.random.Generator, suffix: str) -> Candidates:
  out: Candidates = []
  for colour in COLOURS:
    out.append(("count", f"How many {colour} objects {suffix}?", str(count(scene, colour=colour))))
  for shape in SHAPES:
    out.append(("count", f"How many {language.plural(shape)} {suffix}?",
                str(count(scene, shape=shape))))
  present = sorted(language.object_types(scene))
  absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
  for k in rng.permutation(len(absent))[:2]:
    present.append(absent[int(k)])
  for colour, shape in present:
    out.append(("count", f"How many {colour} {language.plural(shape)} {suffix}?",
                str(count(scene, colour=colour, shape=shape))))
  return out


def vqa_candidates(scene: Scene, rng: np.random.Generator) -> Candidates:
  """VQA-style questions true of ``scene``."""
  out: Candidates = []
  objects = scene.objects
  for k, obj in enumerate(objects):
    if (name := _named(scene, k, rng, exclude=("colour",))) is not None:
      out.append(("color", f"What color is the {name}?", obj.colour))
      other = str(rng.choice([c for c in COLOURS if c != obj.colour]))
      for colour in (obj.colour, other):
        out.append(("verify", f"Is the {name} {colour}?", "yes" if colour == obj.colour else "no"))
    if (name := _named(scene, k, rng, exclude=("shape",))) is not None:
      out.append(("shape", f"What shape is the {name}?", obj.shape))
  out.extend(_count_questions(scene, rng, "are there"))
  present = language.object_types(scene)
  for colour in COLOURS:
    for shape in SHAPES:
      out.append(("exists", f"Is there {language.a(colour)} {shape}?",
                  "yes" if (colour, shape) in present else "no"))
  for a, b in language.pairs(len(objects)):
    name_a, name_b = _named(scene, a, rng, spatial=False), _named(scene, b, rng, spatial=False)
    if name_a is None or name_b is None:
      continue
    if horizontally_apart(objects[a], objects[b]):
      out.append(("relation", f"Is the {name_a} to the left of the {name_b}?",
                  "yes" if left_of(objects[a], objects[b]) else "no"))
    if vertically_apart(objects[a], objects[b]):
      out.append(("relation", f"Is the {name_a} above the {name_b}?",
                  "yes" if above(objects[a], objects[b]) else "no"))
  return out


def _only_related(scene: Scene, anchor: int, relation: str) -> int | None:
  """The one object in ``relation`` to object ``anchor``, or None if not exactly one."""
  holds = RELATIONS[relation]
  related = [k for k, o in enumerate(scene.objects)
             if k != anchor and holds(o, scene.objects[anchor])]
  return related[0] if len(related) == 1 else None


_RELATION_PHRASE = {"left of": "to the left of", "right of": "to the right of",
                    "above": "above", "below": "below"}


def genome_candidates(scene: Scene, rng: np.random.Generator) -> Candidates:
  """Visual Genome-style questions (what / where / how many) true of ``scene``."""
  out: Candidates = []
  for k, obj in enumerate(scene.objects):
    # Visual Genome asks about each object in several words.
    for name in _names(scene, k, rng, 3, exclude=("colour",)):
      out.append(("color", f"What is the color of the {name}?", obj.colour))
    for name in _names(scene, k, rng, 3, exclude=("shape",)):
      out.append(("shape", f"What is the {name}?", obj.shape))
    horizontal, vertical = side(scene, obj), level(scene, obj)
    if horizontal and vertical:
      for name in _names(scene, k, rng, 3, spatial=False):
        out.append(("where", f"Where is the {name}?", f"{vertical} {horizontal}"))
    for anchor_name in _names(scene, k, rng, 2, spatial=False):
      for relation, phrase in _RELATION_PHRASE.items():
        target = _only_related(scene, k, relation)
        if target is None:
          continue
        target_obj = scene.objects[target]
        if rng.random() < 0.5:
          out.append(("relation", f"What shape is {phrase} the {anchor_name}?", target_obj.shape))
        else:
          out.append(("relation", f"What color is the object {phrase} the {anchor_name}?",
                      target_obj.colour))
  out.extend(_count_questions(scene, rng, "are in the picture"))
  return out


def gqa_candidates(scene: Scene, rng: np.random.Generator) -> Candidates:
  """GQA-style compositional questions true of ``scene``."""
  out: Candidates = []
  objects = scene.objects
  for k, obj in enumerate(objects):
    if (name := _named(scene, k, rng, spatial=False)) is not None:
      for relation in ("left of", "right of"):
        target = _only_related(scene, k, relation)
        if target is not None:
          out.append(("relate", f"What is the shape of the object {_RELATION_PHRASE[relation]} "
                      f"the {name}?", objects[target].shape))
      for relation in ("above", "below"):
        target = _only_related(scene, k, relation)
        if target is not None:
          out.append(("relate", f"Which color is the object {relation} the {name}?",
                      objects[target].colour))
      if (where := side(scene, obj)) is not None:
        for side_name in _names(scene, k, rng, 2, spatial=False):
          out.append(("side", f"On which side is the {side_name}?", where))
    for colour_name in _names(scene, k, rng, 2, exclude=("colour",)):
      out.append(("color", f"Which color is the {colour_name}?", obj.colour))
  for a, b in language.pairs(len(objects)):
    oa, ob = objects[a], objects[b]
    if a < b and oa.size != ob.size:
      name_a = _named(scene, a, rng, exclude=("size",), spatial=False)
      name_b = _named(scene, b, rng, exclude=("size",), spatial=False)
      if name_a and name_b:
        word = str(rng.choice(("bigger", "smaller")))
        truth = bigger(oa, ob) if word == "bigger" else bigger(ob, oa)
        out.append(("compare", f"Is the {name_a} {word} than the {name_b}?",
                    "yes" if truth else "no"))
    if a < b and horizontally_apart(oa, ob):
      name_a, name_b = _named(scene, a, rng, spatial=False), _named(scene, b, rng, spatial=False)
      if name_a and name_b:
        out.append(("choose", f"Is the {name_a} to the left or to the right of the {name_b}?",
                    "left" if left_of(oa, ob) else "right"))
    if a < b:
      attribute = str(rng.choice(("colour", "shape")))
      name_a = _named(scene, a, rng, exclude=(attribute,), spatial=False)
      name_b = _named(scene, b, rng, exclude=(attribute,), spatial=False)
      if name_a and name_b and name_a != name_b:
        same = getattr(oa, attribute) == getattr(ob, attribute)
        question = (f"Do the {name_a} and the {name_b} have the same color?"
                    if attribute == "colour" else
                    f"Are the {name_a} and the {name_b} the same shape?")
        out.append(("same", question, "yes" if same else "no"))
  present = sorted(language.object_types(scene))
  for k in rng.permutation(len(present))[:3]:
    colour, shape = present[int(k)]
    other = (str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)))
    if other == (colour, shape):
      continue
    first, second = ((colour, shape), other) if rng.random() < 0.5 else (other, (colour, shape))
    answer = "yes" if first in present and second in present else "no"
    out.append(("logic", f"Are there both {first[0]} {language.plural(first[1])} and "
                f"{second[0]} {language.plural(second[1])}?", answer))
  return out
