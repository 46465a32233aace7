"""The generator's part of each task: which image pool it annotates, how, and how it is scored.

The generated release holds one dataset per registered task that has a part here. A part
says what the generator cannot read from the task registry (which has the task's paths and
splits): the pool of scenes the task draws on, the writer of its annotation files, the keys of
its detected-region LMDB, its chance levels and blind baselines, and the text length that fits
its generated texts. A further task adds its part with :func:`register_part` (or, for a
limited scope, ``with registered_part(...)``).

:func:`generated_task_settings` turns a part and the generator's settings into the task shapes
that fit the generated data (text length, regions), which the smoke config trains with.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from twelve_in_one.data.generate import (baselines, caption_sets, pointing, qa, referring,
                                         statements)
from twelve_in_one.data.generate.layout import MAX_OBJECTS, GeneratorConfig
from twelve_in_one.data.generate.pools import POOL_CODE, PoolImage
from twelve_in_one.tasks.registry import TASKS, get_task

Writer = Callable[[str, Sequence[PoolImage], GeneratorConfig], dict[str, Any]]


def _image_id(image: PoolImage) -> int | str:
  return image.image_id


@dataclasses.dataclass(frozen=True)
class GeneratorPart:
  """How the generator writes one task of the release.

  Attributes:
    pool: the image pool whose scenes the task annotates (a key of `pools.POOL_CODE`).
    write: `(datasets_dir, pool images, config) -> counts`: writes the task's annotation files
      (and its GT-box LMDB, if any) under `datasets_dir`, at the registry's paths.
    baselines: `(task name, datasets_dir, features) -> dict` with at least `chance`,
      `text_only` and `image_only` on the task's val split (see `baselines.py`).
    text_length: tokens that fit the longest generated text plus a margin (without the task
      token): the smoke run's `max_seq_length`, since attention and the FFNs cost per token.
    feature_key: the key of an image in the task's detected-region LMDB.
    feature_images: the pool images the task's detected-region LMDB holds (default: all).
    split_feature_keys: for each split with a feature file of its own (`Task.split_features`),
      the key of an image in it (default: `feature_key`); that file holds the split's images.
    smoke_settings: task settings the smoke run changes besides the shapes (its reasons in a
      comment where the part is declared).
  """
  pool: str
  write: Writer
  baselines: baselines.Baselines
  text_length: int
  feature_key: Callable[[PoolImage], int | str] = _image_id
  feature_images: Callable[[Sequence[PoolImage]], Sequence[PoolImage]] | None = None
  split_feature_keys: Mapping[str, Callable[[PoolImage], int | str]] = dataclasses.field(
      default_factory=dict)
  smoke_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self) -> None:
    if self.pool not in POOL_CODE:
      raise ValueError(f"generator part: pool {self.pool!r}; expected one of "
                       f"{sorted(POOL_CODE)}")


def _refer_part(task: str, text_length: int) -> GeneratorPart:
  dataset = get_task(task).reader_dataset
  return GeneratorPart(
      "coco", lambda out, images, config: referring.write_refer(out, images, config, task),
      baselines.refer_baselines, text_length,
      feature_images=lambda images: referring.refer_images(images, dataset))


# Registry task name -> its part. The writers are looked up when called, so a test can
# replace one (e.g. to interrupt a run).
PARTS: dict[str, GeneratorPart] = {
    "vqa": GeneratorPart("coco", lambda *args: qa.write_vqa(*args),
                         baselines.classification_baselines, 20,
                         split_feature_keys={"test": qa.test2015_id}),
    "genome_qa": GeneratorPart("genome", lambda *args: qa.write_genome(*args),
                               baselines.classification_baselines, 20),
    "visual7w": GeneratorPart("genome", lambda *args: pointing.write_visual7w(*args),
                              baselines.pointing_baselines, 18,
                              feature_key=lambda image: f"v7w_{image.image_id}"),
    "retrieval_coco": GeneratorPart(
        "coco", lambda out, images, config: caption_sets.write_retrieval(
            out, images, config, "retrieval_coco"), baselines.retrieval_baselines, 22),
    "retrieval_flickr30k": GeneratorPart(
        "flickr", lambda out, images, config: caption_sets.write_retrieval(
            out, images, config, "retrieval_flickr30k"), baselines.retrieval_baselines, 22),
    "refcoco": _refer_part("refcoco", 14),
    "refcoco_plus": _refer_part("refcoco_plus", 14),
    "refcocog": _refer_part("refcocog", 20),
    "nlvr2": GeneratorPart("nlvr2", lambda *args: statements.write_nlvr2(*args),
                           baselines.classification_baselines, 24,
                           feature_key=lambda image: image.key),
    "snli_ve": GeneratorPart("flickr", lambda *args: statements.write_snli_ve(*args),
                             baselines.classification_baselines, 20),
    # GQA keys its (Visual Genome) images by id strings. Its compositional questions get twice
    # the official lr ratio (a loss scale of 4 instead of 2) and twice the batch in the smoke
    # run: with the official settings GQA ended only ~1 point above its prior; with these, it
    # and the other QA tasks end well above.
    "gqa": GeneratorPart("genome", lambda *args: qa.write_gqa(*args),
                         baselines.classification_baselines, 24,
                         feature_key=lambda image: str(image.image_id),
                         smoke_settings={"batch_size": 32, "lr": 8e-5}),
    "guesswhat_pointing": GeneratorPart("coco", lambda *args: pointing.write_guesswhat(*args),
                                        baselines.pointing_baselines, 64),
}


def register_part(task: str, part: GeneratorPart) -> GeneratorPart:
  """Adds the generator part of a registered task; the next generated release holds it.

  Raises:
    ValueError: the task is not registered, or already has a part.
  """
  name = get_task(task).name
  if name in PARTS:
    raise ValueError(f"task {name!r} already has a generator part")
  PARTS[name] = part
  return part


def unregister_part(task: str) -> GeneratorPart:
  """Removes a part added with `register_part`."""
  if task not in PARTS:
    raise ValueError(f"task {task!r} has no generator part; parts: {sorted(PARTS)}")
  return PARTS.pop(task)


@contextlib.contextmanager
def registered_part(task: str, part: GeneratorPart) -> Iterator[GeneratorPart]:
  """`register_part` for the duration of a `with` block."""
  register_part(task, part)
  try:
    yield part
  finally:
    unregister_part(get_task(task).name)


def generated_parts() -> dict[str, GeneratorPart]:
  """The parts of the registered tasks, in registry order (the order of the summary)."""
  return {name: PARTS[name] for name in TASKS if name in PARTS}


def generated_task_settings(task: str, config: GeneratorConfig | None = None
                            ) -> dict[str, Any]:
  """Task settings that fit the generated dataset of `task`: shapes and `smoke_settings`.

  Every image has `config.num_regions` detector boxes plus the global region. Pointing tasks
  store their candidates, an image's ground-truth boxes (at most `MAX_OBJECTS`), after those;
  a task that pads its candidate list (`Task.num_choices == 0`, GuessWhat) keeps one more,
  always empty, row for the pad id.
  """
  config = config or GeneratorConfig()
  entry = get_task(task)
  part = PARTS.get(entry.name)
  if part is None:
    raise ValueError(f"task {entry.name!r} has no generator part; parts: {sorted(PARTS)}")
  detected = config.num_regions + 1
  regions = detected
  if entry.head_spec.target == "pointing":
    regions += MAX_OBJECTS + (0 if entry.num_choices else 1)
  return {"max_seq_length": part.text_length, "max_region_num": regions,
          "num_detected_regions": detected, **part.smoke_settings}
