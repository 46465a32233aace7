"""Answer balancing: choose examples so that the text alone does not give the answer.

Generators first list every (text, label) pair that is true of each scene:
far more candidates than needed, and with skewed labels (most colour/shape
combinations are absent from a scene, so "Is there a red star?" is usually
"no"). :func:`balanced_sample` then picks the examples in *rounds*: one round
of a text takes one candidate of every label that text has among the
candidates. Within each text the labels are therefore exactly as frequent as
each other, and a guess from the text alone (the majority label of that
exact question string) is no better than a guess from the question's type.
Texts seen with a single label (mostly long, one-off questions) come last,
in rounds that pair different texts of different labels, so that within a
kind they are label-balanced too. Kinds (question templates) get equal
shares of the sample, so no one template dominates.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One possible example.

  Attributes:
    text: what a text-only guess conditions on (question, statement, ...).
    label: the true answer of the example.
    kind: the template family, for the equal shares.
    payload: whatever the writer needs (image reference, boxes, ...).
  """

  text: str
  label: Hashable
  kind: str
  payload: Any = None


@dataclasses.dataclass
class Sample:
  """The chosen examples and how many of them repeat an earlier one."""

  examples: list[Candidate]
  repeats: int


def _rounds(candidates: Sequence[Candidate], rng: np.random.Generator) -> list[list[Candidate]]:
  """Balanced rounds of each text, in a random order (first rounds of all texts first)."""
  by_text: dict[str, dict[Hashable, list[Candidate]]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for candidate in candidates:
    by_text[candidate.text][candidate.label].append(candidate)
  layers: list[list[list[Candidate]]] = []
  single: dict[Hashable, list[Candidate]] = collections.defaultdict(list)
  for text in sorted(by_text):
    buckets = by_text[text]
    labels = sorted(buckets, key=repr)
    for label in labels:
      order = rng.permutation(len(buckets[label]))
      buckets[label] = [buckets[label][int(k)] for k in order]
    if len(labels) == 1:
      single[labels[0]].append(buckets[labels[0]][0])
      continue
    for level in range(min(len(buckets[label]) for label in labels)):
      while len(layers) <= level:
        layers.append([])
      layers[level].append([buckets[label][level] for label in labels])
  # A text seen with one label only (mostly rare, long texts) is used once,
  # in rounds that pair texts of different labels: across the kind, such
  # texts are then label-balanced too, so no cue like "rare combination ->
  # no" survives. Unpaired ones are dropped.
  single_labels = sorted(single, key=repr)
  if len(single_labels) > 1:
    for label in single_labels:
      order = rng.permutation(len(single[label]))
      single[label] = [single[label][int(k)] for k in order]
    depth = min(len(single[label]) for label in single_labels)
    layers.append([[single[label][level] for label in single_labels]
                   for level in range(depth)])
  ordered: list[list[Candidate]] = []
  for layer in layers:
    for k in rng.permutation(len(layer)):
      ordered.append(layer[int(k)])
  return ordered


def _take(rounds: list[list[Candidate]], quota: int) -> list[Candidate]:
  taken: list[Candidate] = []
  for round_ in rounds:
    if len(taken) >= quota:
      break
    taken.extend(round_[:quota - len(taken)])
  return taken


def balanced_sample(candidates: Sequence[Candidate], num: int,
                    rng: np.random.Generator) -> Sample:
  """Choose ``num`` candidates, label-balanced per text and spread over kinds.

  When the balanced candidates run out (tiny scene pools, or the release's
  fixed 3000/5000-question validation splits), rounds are reused; the
  number of such repeated examples is reported.

  Raises:
    ValueError: there are no candidates at all.
  """
  if not candidates:
    raise ValueError("no candidates to sample from")
  by_kind: dict[str, list[Candidate]] = collections.defaultdict(list)
  for candidate in candidates:
    by_kind[candidate.kind].append(candidate)
  kinds = sorted(by_kind)
  rounds = {kind: _rounds(by_kind[kind], rng) for kind in kinds}
  available = {kind: sum(len(r) for r in rounds[kind]) for kind in kinds}
  # Equal shares; a kind with too few candidates gives its leftover to the rest.
  quota = {kind: 0 for kind in kinds}
  remaining, open_kinds = num, [k for k in kinds if available[k] > 0]
  while remaining > 0 and open_kinds:
    share = max(1, remaining // len(open_kinds))
    for kind in list(open_kinds):
      grant = min(share, available[kind] - quota[kind], remaining)
      quota[kind] += grant
      remaining -= grant
      if quota[kind] >= available[kind]:
        open_kinds.remove(kind)
      if remaining == 0:
        break
  chosen: list[Candidate] = []
  for kind in kinds:
    chosen.extend(_take(rounds[kind], quota[kind]))
  repeats = 0
  all_rounds = [r for kind in kinds for r in rounds[kind]]
  if not all_rounds:
    raise ValueError("no text has a balanced set of labels to sample from")
  # Reuse whole rounds, so the balance survives the repetition.
  while len(chosen) < num:
    round_ = all_rounds[int(rng.integers(len(all_rounds)))]
    extra = round_[:num - len(chosen)]
    chosen.extend(extra)
    repeats += len(extra)
  order = rng.permutation(len(chosen))
  return Sample([chosen[int(k)] for k in order], repeats)
