"""One image (or an NLVR2 pair), one text, one task: what the model says, and why.

    image = load_features("features.lmdb", image_id="100001")
    pred = predict(params, model_config, "vqa", image, "what color is the star?",
                   label2ans=vocab, top_k=5, attention=True)
    pred.result["answers"]     # [{"label", "answer", "probability"}, ...]

What `result` holds, by head type:

| task kind | result |
|---|---|
| question answering (VQA, VG-QA, GQA) | `answers`: top-k {label, answer, probability}; `answer` |
| referring expressions (V-logit) | `box` (pixels), `region`, `score`; `top_regions` |
| pointing (V-logit-mc) | the same, choosing among `candidates` (default: every detected box) |
| retrieval (VL-logit) | `alignment_score`: the raw `vil_logit` (what retrieval ranks by) |
| NLVR2 / SNLI-VE | `label`, `prediction` (its name), `probabilities` per label name |

Probabilities are softmaxes over the head's logits (answers, labels). Region scores are
sigmoids of `vision_logit`: the head is trained with BCE against IoU targets, so the score
reads as a predicted overlap. The text is tokenized as the task's datasets do it; a text with
more word pieces than the task holds is an error rather than silently cut (`truncate=True`
cuts it as the datasets do).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import numpy as np

from twelve_in_one import paths
from twelve_in_one.data.features import (BottomUpTSV, FeatureLMDB, ImageFeatures,
                                         build_image_features, pad_regions)
from twelve_in_one.evaluate.scoring import CLASSIFIERS, LABEL_NAMES
from twelve_in_one.models import ViLBertForVLTasks, scan
from twelve_in_one.models.config import ViLBertConfig
from twelve_in_one.tasks.registry import Task, get_task


class TextTooLong(ValueError):
  """The text has more word pieces than the task's `max_seq_length` holds."""


@dataclasses.dataclass
class Prediction:
  """A prediction and what is needed to draw it."""
  task: str
  text: str
  tokens: list[str]            # the model's text positions: [CLS], <task>, pieces, [SEP]
  result: dict[str, Any]
  images: list[ImageFeatures]
  attention: np.ndarray | None = None   # [len(tokens), regions] of the first image

  def to_json(self) -> dict[str, Any]:
    return {"task": self.task, "text": self.text, "image_ids": [i.image_id for i in self.images],
            **self.result}


def load_features(path: str, image_id: str | None = None, feature_dim: int = 2048
                  ) -> ImageFeatures:
  """One image's regions from a release LMDB (with `image_id`), an `.npz` or a TSV file.

  An `.npz` holds `features` [N, D], `boxes` [N, 4] (pixel x1, y1, x2, y2), `image_w` and
  `image_h` (and optionally `image_id`); it may be local or on `gs://`. A TSV without
  `image_id` must hold one row.
  """
  path = os.fspath(path)
  if path.endswith(".npz"):
    location = paths.as_path(path)   # epath: an .npz may sit in a gs:// bucket
    if not location.is_file():
      raise FileNotFoundError(f"{path}: no such .npz feature file")
    with location.open("rb") as file, np.load(file, allow_pickle=False) as archive:
      missing = [k for k in ("features", "boxes", "image_w", "image_h") if k not in archive]
      if missing:
        raise ValueError(f"{path}: lacks {missing}; expected features [N, D], boxes [N, 4] "
                         "(pixels), image_w, image_h")
      stored = str(archive["image_id"]) if "image_id" in archive else None
      return build_image_features(image_id or stored or location.name[:-4],
                                  archive["features"], archive["boxes"],
                                  int(archive["image_h"]), int(archive["image_w"]),
                                  source=path, feature_dim=feature_dim)
  if paths.is_remote(path):
    # LMDB is a memory-mapped local database and the TSV reader seeks in local files.
    raise FileNotFoundError(f"{path}: feature LMDBs and TSV files are read from a local disk; "
                            "copy it to this machine (`gcloud storage cp -r`) or give an .npz")
  if path.endswith(".tsv"):
    reader = BottomUpTSV(path, feature_dim=feature_dim)
    if image_id is None:
      if len(reader) != 1:
        raise ValueError(f"{path}: holds {len(reader)} images; pass the image id of one")
      image_id = reader.keys()[0]
    return reader[image_id]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: not a feature LMDB directory, .npz or .tsv file")
  if image_id is None:
    raise ValueError(f"{path}: an LMDB holds many images; pass the image id to read")
  return FeatureLMDB(path, feature_dim=feature_dim)[image_id]


def release_features(release_dir: str, task: Task | str) -> str:
  """The feature LMDB of a task inside a release (the official one or the generated one)."""
  from twelve_in_one.evaluate.sources import release_root
  task = get_task(task) if isinstance(task, str) else task
  return os.fspath(release_root(release_dir) / task.features)


def encode_text(task: Task, text: str, tokenizer, truncate: bool = False
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(input_ids [T], input_mask [T], word pieces) in the task's text layout."""
  pieces = tokenizer.tokenize(text)
  if len(pieces) + 2 > task.max_seq_length and not truncate:
    raise TextTooLong(f"task {task.name}: the text has {len(pieces)} word pieces, but the task "
                      f"holds {task.max_seq_length - 2} (max_seq_length={task.max_seq_length} "
                      "with [CLS] and [SEP]); shorten it or pass truncate=True")
  ids, mask, _ = tokenizer.encode(text, task.max_seq_length)
  return ids, mask, pieces[:task.max_seq_length - 2]


@functools.lru_cache(maxsize=32)
def _forward(model_config: ViLBertConfig, output: str, attention: bool):
  """A compiled forward for one head (and optionally the sown co-attention probabilities)."""
  model = ViLBertForVLTasks(model_config)

  def run(params, inputs, task_id):
    if not attention:
      return model.apply({"params": params}, **inputs, task_ids=task_id, outputs=(output,)), {}
    out, state = model.apply({"params": params}, **inputs, task_ids=task_id, outputs=(output,),
                             mutable=["intermediates"])
    return out, state["intermediates"]

  return jax.jit(run)


def last_text_to_image(intermediates: dict, model_config: ViLBertConfig) -> np.ndarray:
  """Head-averaged text->image probabilities of the last co-attention block: [B, T+1, R].

  With `scan_layers` the blocks' maps are sown stacked along the scan; `coattention_maps`
  gives them per block in either layout.
  """
  maps = scan.coattention_maps(intermediates, model_config)
  last = max(maps, key=lambda name: int(name.rsplit("_", 1)[1]))
  probabilities = np.asarray(maps[last]["text_to_image"][0], np.float32)
  return probabilities.mean(axis=1)


def predict(params: Any, model_config: ViLBertConfig, task: Task | str,
            features: ImageFeatures | Sequence[ImageFeatures], text: str, *, tokenizer=None,
            label2ans: Sequence[str] | None = None, top_k: int = 5,
            candidates: Sequence[int] | None = None, attention: bool = False,
            truncate: bool = False) -> Prediction:
  """Runs one task on one image (two for NLVR2) and a text; see the module docstring.

  Args:
    params: the model parameters (numpy or device arrays).
    model_config: their config.
    task: a registry task or its name (its `max_seq_length` / `max_region_num` apply).
    features: the image's regions (`load_features`); NLVR2 takes a pair.
    text: the question, expression, caption, statement or hypothesis.
    tokenizer: a `data.tokenizer.Tokenizer` (default: the built-in bert-base-uncased one).
    label2ans: answer strings of a question-answering task (else answers are label numbers).
    top_k: answers or regions listed.
    candidates: pointing tasks: region indices to choose from (default: every detected box).
    attention: also return the co-attention map (text tokens × regions).
    truncate: cut a too-long text instead of raising `TextTooLong`.
  """
  task = get_task(task) if isinstance(task, str) else task
  images = [features] if isinstance(features, ImageFeatures) else list(features)
  if len(images) != task.images_per_example:
    raise ValueError(f"task {task.name}: takes {task.images_per_example} image(s), got "
                     f"{len(images)}")
  for image in images:
    if image.features.shape[1] != model_config.v_feature_size:
      raise ValueError(f"image {image.image_id!r}: {image.features.shape[1]}-d features, the "
                       f"model takes {model_config.v_feature_size}")
  if tokenizer is None:
    from twelve_in_one.data.tokenizer import Tokenizer
    tokenizer = Tokenizer()
  ids, mask, pieces = encode_text(task, text, tokenizer, truncate)
  if ids.max() >= model_config.vocab_size:
    raise ValueError(f"token id {int(ids.max())} is outside the model's vocabulary of "
                     f"{model_config.vocab_size}; the tokenizer does not match the model")
  padded = [pad_regions(image, task.max_region_num) for image in images]
  rows = len(images)
  inputs = {"input_ids": np.tile(ids, (rows, 1)), "input_mask": np.tile(mask, (rows, 1)),
            "segment_ids": np.zeros((rows, ids.shape[0]), np.int32),
            "image_feat": np.stack([p[0] for p in padded]),
            "image_loc": np.stack([p[1] for p in padded]),
            "image_mask": np.stack([p[2] for p in padded])}
  outputs, intermediates = _forward(model_config, task.output, attention)(
      params, inputs, np.int32(task.task_id))
  logits = np.asarray(outputs[task.output], np.float32)
  tokens = ["[CLS]"] + ([f"<{task.key}>"] if model_config.task_specific_tokens else []) + \
      pieces + ["[SEP]"]
  result = _decode(task, logits, inputs["image_mask"][0], images[0], label2ans, top_k,
                   candidates)
  probabilities = None
  if attention:
    probabilities = last_text_to_image(intermediates, model_config)[0][:len(tokens)]
  return Prediction(task.name, text, tokens, result, images, probabilities)


def _softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max())
  return shifted / shifted.sum()


def _decode(task: Task, logits: np.ndarray, image_mask: np.ndarray, image: ImageFeatures,
            label2ans: Sequence[str] | None, top_k: int,
            candidates: Sequence[int] | None) -> dict[str, Any]:
  kind = task.head_type
  if kind in CLASSIFIERS:
    probabilities = _softmax(logits[0])
    if label2ans is not None and len(label2ans) != probabilities.shape[0]:
      raise ValueError(f"task {task.name}: label2ans has {len(label2ans)} answers, the "
                       f"model's head {probabilities.shape[0]}")
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    answers = [{"label": int(i), "answer": label2ans[i] if label2ans is not None else str(i),
                "probability": float(probabilities[i])} for i in order]
    return {"answer": answers[0]["answer"], "answers": answers}
  if kind in LABEL_NAMES:
    names = LABEL_NAMES[kind]
    probabilities = _softmax(logits[0])
    label = int(np.argmax(probabilities))
    return {"label": label, "prediction": names[label],
            "probabilities": {name: float(p) for name, p in zip(names, probabilities)}}
  if kind == "VL-logit":
    return {"alignment_score": float(logits[0, 0])}
  if kind in ("V-logit", "V-logit-mc"):
    return _choose_region(task, logits[0, :, 0], image_mask, image, top_k, candidates)
  raise ValueError(f"task {task.name}: no prediction for head type {kind!r}")


def _choose_region(task: Task, logits: np.ndarray, image_mask: np.ndarray,
                   image: ImageFeatures, top_k: int, candidates: Sequence[int] | None
                   ) -> dict[str, Any]:
  real = np.flatnonzero(image_mask > 0)
  if task.head_type == "V-logit-mc" or candidates is not None:
    # Pointing chooses among boxes; the global (whole-image) region 0 is never a candidate.
    allowed = real[real > 0] if candidates is None else np.asarray(candidates, np.int64)
    bad = [int(c) for c in allowed if c not in set(real.tolist())]
    if bad or allowed.size == 0:
      raise ValueError(f"task {task.name}: candidate regions {bad or []} are not among the "
                       f"image's {real.size} regions (indices 0..{real.size - 1})")
  else:
    allowed = real           # referring expressions: the official argmax over every region
  order = allowed[np.argsort(-logits[allowed], kind="stable")]
  scores = 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))   # sigmoid, overflow-free

  def region(index: int) -> dict[str, Any]:
    return {"region": int(index), "box": [round(float(v), 2)
                                          for v in image.boxes_pixels5[index, :4]],
            "score": float(scores[index])}

  chosen = region(order[0])
  return {**chosen, "top_regions": [region(i) for i in order[:top_k]],
          "candidates": [int(i) for i in allowed]}
