"""Statements about scenes: NLVR2-style (two images) and SNLI-VE-style hypotheses.

**NLVR2**: a statement about a pair of images (left = ``img0``, right =
``img1``): counts in one image, presence in both or only one, comparisons of
counts between the images, totals and spatial relations. Its truth is read
off the two scene graphs; statements are chosen so that each statement
string is true as often as it is false (see ``balance.py``).

**SNLI-VE**: the premise is the image, the hypothesis a sentence "The
<subject> <predicate>." The subject is a definite description ("the red
circle", "the small square", "the green object"); the label depends on the
scene, so the same hypothesis takes all three labels across images:

* entailment: the subject names exactly one object, and the predicate holds
  of it;
* contradiction: the subject names exactly one object, and the predicate
  does not hold of it;
* neutral: the subject names no object in the image, so the image says
  nothing about the sentence either way.

Subjects that name several objects are not used: "the circle" would be
ambiguous there.

Files: ``nlvr2/{train,dev,test}.json`` (JSON-lines; identifiers
``<split>-<set>-<pair>-<k>``, whose images are keyed ``...-img0/1``) and
``visual_entailment/snli_ve_{train,dev,test}.jsonl``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from twelve_in_one.data.generate import layout, language
from twelve_in_one.data.generate.balance import Candidate, balanced_sample
from twelve_in_one.data.generate.layout import DATAROOTS, GeneratorConfig
from twelve_in_one.data.generate.pools import PoolImage, split_images
from twelve_in_one.data.generate.caption_sets import image_captions
from twelve_in_one.data.generate.scenes import (
    COLOURS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    count,
    left_of,
    level,
    side,
)

NLVR2_MAX_PIECES = 40 - 2
SNLI_VE_MAX_PIECES = 56 - 2
NLVR2_PER_PAIR = {"train": 18.0, "dev": 5.0, "test": 5.0}
SNLI_VE_PER_IMAGE = {"train": 5.0, "val": 3.0, "test": 3.0}
_SNLI_VE_SPLITS = {"train": "train", "val": "dev", "test": "test"}


def _things(attribute: str, value: str, n: int) -> str:
  """``"one red object"``, ``"two circles"``..."""
  if attribute == "colour":
    return f"{language.number_word(n)} {value} object{'s' if n != 1 else ''}"
  return f"{language.number_word(n)} {value if n == 1 else language.plural(value)}"


def _plural_things(attribute: str, value: str) -> str:
  return f"{value} objects" if attribute == "colour" else language.plural(value)


def _a_thing(attribute: str, value: str) -> str:
  return language.a(f"{value} object" if attribute == "colour" else value)


def nlvr2_candidates(left: Scene, right: Scene,
                     rng: np.random.Generator) -> list[tuple[str, str, bool]]:
  """``(kind, statement, truth)`` candidates about an image pair."""
  out: list[tuple[str, str, bool]] = []
  images = {"left": left, "right": right}
  present = sorted({(o.colour, o.shape) for scene in (left, right) for o in scene.objects})
  values = [("colour", c) for c in COLOURS] + [("shape", s) for s in SHAPES]
  for attribute, value in values:
    counts = {name: count(scene, **{attribute: value}) for name, scene in images.items()}
    for name in images:
      n = int(rng.integers(1, 4))
      out.append(("count", f"The {name} image contains exactly {_things(attribute, value, n)}.",
                  counts[name] == n))
    out.append(("both", f"Both images contain {_a_thing(attribute, value)}.",
                min(counts.values()) > 0))
    out.append(("one", f"Exactly one image contains {_a_thing(attribute, value)}.",
                (counts["left"] > 0) != (counts["right"] > 0)))
    out.append(("compare", f"The left image contains more {_plural_things(attribute, value)} "
                "than the right image.", counts["left"] > counts["right"]))
    total = int(rng.integers(2, 5))
    out.append(("total", f"There are {_things(attribute, value, total)} in total.",
                sum(counts.values()) == total))
  for colour, shape in present:
    for name, scene in images.items():
      out.append(("exists", f"The {name} image contains {language.a(colour)} {shape}.",
                  count(scene, colour=colour, shape=shape) > 0))
  for first, second in language.pairs(len(present)):
    (c1, s1), (c2, s2) = present[first], present[second]
    for name, scene in images.items():
      holds = any(a.colour == c1 and a.shape == s1 and b.colour == c2 and b.shape == s2
                  and left_of(a, b) for a in scene.objects for b in scene.objects)
      out.append(("relation", f"In the {name} image, {language.a(c1)} {s1} is to the left of "
                  f"{language.a(c2)} {s2}.",
                  holds))
  return [item for item in out if language_pieces(item[1]) <= NLVR2_MAX_PIECES]


def language_pieces(text: str) -> int:
  """Word pieces of a sentence (words and punctuation marks)."""
  return len(text.replace(",", " ,").replace(".", " .").replace("?", " ?").split())


# SNLI-VE subjects: (text, attributes named); predicates: (attribute, text, truth).
def _subjects(shape: str, colour: str, size: str) -> list[tuple[str, dict[str, str]]]:
  return [(f"The {shape}", {"shape": shape}),
          (f"The {colour} object", {"colour": colour}),
          (f"The {size} {shape}", {"size": size, "shape": shape}),
          (f"The {colour} {shape}", {"colour": colour, "shape": shape})]


def _predicates(scene: Scene) -> list[tuple[str, str, Callable[[SceneObject], bool | None]]]:
  preds: list[tuple[str, str, Callable[[SceneObject], bool | None]]] = []
  for colour in COLOURS:
    preds.append(("colour", f"is {colour}", lambda o, c=colour: o.colour == c))
  for shape in SHAPES:
    preds.append(("shape", f"is a {shape}", lambda o, s=shape: o.shape == s))
  for size in SIZES:
    preds.append(("size", f"is {size}", lambda o, z=size: o.size == z))
  preds.append(("position", "is on the left side of the picture",
                lambda o: None if side(scene, o) is None else side(scene, o) == "left"))
  preds.append(("position", "is on the right side of the picture",
                lambda o: None if side(scene, o) is None else side(scene, o) == "right"))
  preds.append(("position", "is in the upper half of the picture",
                lambda o: None if level(scene, o) is None else level(scene, o) == "top"))
  preds.append(("position", "is in the lower half of the picture",
                lambda o: None if level(scene, o) is None else level(scene, o) == "bottom"))
  return preds


def snli_ve_candidates(scene: Scene) -> list[tuple[str, str, str]]:
  """``(kind, hypothesis, label)`` candidates for one image.

  Every subject the scene's objects could be named by is a candidate, and so is every subject
  of the same forms for an object type the scene lacks (neutral).
  """
  out: list[tuple[str, str, str]] = []
  subjects = {}
  for shape in SHAPES:
    for colour in COLOURS:
      for size in SIZES:
        for text, attributes in _subjects(shape, colour, size):
          subjects[text] = attributes
  predicates = _predicates(scene)
  for subject, attributes in sorted(subjects.items()):
    named = [o for o in scene.objects
             if all(getattr(o, key) == value for key, value in attributes.items())]
    if len(named) > 1:
      continue  # an ambiguous description
    for attribute, text, truth in predicates:
      if attribute in attributes:
        continue
      if not named:
        label = "neutral"
      else:
        value = truth(named[0])
        if value is None:
          continue  # an object near the middle: the position is not clear-cut
        label = "entailment" if value else "contradiction"
      out.append((attribute, f"{subject} {text}.", label))
  return out


def write_nlvr2(datasets_dir: str, nlvr2: Sequence[PoolImage], config: GeneratorConfig
                ) -> dict[str, Any]:
  """Write ``nlvr2/{train,dev,test}.json``; returns counts."""
  root = os.path.join(datasets_dir, DATAROOTS["nlvr2"])
  counts: dict[str, Any] = {}
  for split_code, split in enumerate(("train", "dev", "test"), start=1):
    images = split_images(nlvr2, split)
    pairs = [(images[k], images[k + 1]) for k in range(0, len(images), 2)]
    candidates = []
    for left, right in pairs:
      rng = np.random.default_rng([config.seed, 61, left.index])
      for kind, text, truth in nlvr2_candidates(left.scene, right.scene, rng):
        candidates.append(Candidate(text, "True" if truth else "False", kind, left))
    num = max(2, int(round(NLVR2_PER_PAIR[split] * len(pairs))))
    sample = balanced_sample(candidates, num,
                             np.random.default_rng([config.seed, 61, 0, split_code]))
    per_pair: dict[str, int] = {}
    records = []
    for candidate in sorted(sample.examples, key=lambda c: c.payload.index):
      stem = candidate.payload.key[:-len("-img0")]
      k = per_pair.setdefault(stem, 0)
      per_pair[stem] += 1
      records.append({"identifier": f"{stem}-{k}", "sentence": candidate.text,
                      "label": candidate.label, "synset": "shapes", "query": "shapes",
                      "left_url": f"images/nlvr2/{stem}-img0.png",
                      "right_url": f"images/nlvr2/{stem}-img1.png",
                      "writer": "0", "validation": {}, "extra_validations": {}})
    layout.write_jsonl(os.path.join(root, f"{split}.json"), records)
    counts[split] = {"statements": len(records), "pairs": len(pairs), "repeats": sample.repeats}
  return counts


def write_snli_ve(datasets_dir: str, flickr: Sequence[PoolImage], config: GeneratorConfig
                  ) -> dict[str, Any]:
  """Write ``visual_entailment/snli_ve_{train,dev,test}.jsonl``; returns counts."""
  root = os.path.join(datasets_dir, DATAROOTS["snli_ve"])
  by_index = {image.index: image for image in flickr}
  counts: dict[str, Any] = {}
  for split_code, (split, name) in enumerate(_SNLI_VE_SPLITS.items(), start=1):
    images = split_images(flickr, split)
    candidates = [Candidate(text, label, kind, image) for image in images
                  for kind, text, label in snli_ve_candidates(image.scene)
                  if language_pieces(text) <= SNLI_VE_MAX_PIECES]
    num = max(3, int(round(SNLI_VE_PER_IMAGE[split] * len(images))))
    sample = balanced_sample(candidates, num,
                             np.random.default_rng([config.seed, 71, 0, split_code]))
    records = []
    per_image: dict[int, int] = {}
    for candidate in sorted(sample.examples, key=lambda c: c.payload.index):
      image = candidate.payload
      k = per_image.setdefault(image.index, 0)
      per_image[image.index] += 1
      premise = image_captions(image, by_index, config, 22)[0]
      records.append({"gold_label": candidate.label, "sentence1": premise,
                      "sentence2": candidate.text, "Flikr30kID": f"{image.image_id}.jpg",
                      "captionID": f"{image.image_id}.jpg#0",
                      "pairID": f"{image.image_id}.jpg#0r{k}{candidate.label[0]}"})
    layout.write_jsonl(os.path.join(root, f"snli_ve_{name}.jsonl"), records)
    counts[name] = {"pairs": len(records), "repeats": sample.repeats}
  return counts
