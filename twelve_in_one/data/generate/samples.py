"""Sample pictures for the README: generated images with their boxes and texts.

Each picture shows one validation example of a dataset as the release holds
it (read back with the release readers): the image enlarged twice, its
detector boxes in thin grey, the boxes that matter in colour (the target in
green, other candidates in orange), and the question, expression, dialogue
or statement with its answer underneath.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from twelve_in_one.data.annotations import (
    load_guesswhat,
    load_nlvr2,
    load_refer,
    load_retrieval,
    load_snli_ve,
    load_visual7w,
    load_vqa,
)
from twelve_in_one.data.annotations.vqa import load_vqa_answer_vocab
from twelve_in_one.data.generate.layout import DATAROOTS
from twelve_in_one.data.generate.pools import PoolImage
from twelve_in_one.data.generate.caption_sets import VAL_FILE

SCALE = 2
TARGET, CANDIDATE, DETECTED = (20, 170, 60), (240, 140, 20), (110, 110, 110)
Box = Sequence[float]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
  return ImageFont.load_default(size=size)


def _wrap(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
  lines: list[str] = []
  for paragraph in text.split("\n"):
    line = ""
    for word in paragraph.split():
      trial = f"{line} {word}".strip()
      if line and font.getlength(trial) > width:
        lines.append(line)
        line = word
      else:
        line = trial
    lines.append(line)
  return lines


def _picture(out_dir: str, image: PoolImage, highlights: Sequence[tuple[Box, tuple]] = ()
             ) -> Image.Image:
  picture = Image.open(os.path.join(out_dir, image.png_path)).convert("RGB")
  picture = picture.resize((picture.width * SCALE, picture.height * SCALE),
                           Image.Resampling.NEAREST)
  draw = ImageDraw.Draw(picture)
  for box in image.detections.boxes:
    draw.rectangle([float(v) * SCALE for v in box], outline=DETECTED, width=1)
  for box, colour in highlights:
    draw.rectangle([float(v) * SCALE for v in box], outline=colour, width=3)
  return picture


def _panel(pictures: Sequence[Image.Image], title: str, text: str) -> Image.Image:
  """Pictures side by side above a white strip with the title and wrapped text."""
  gap = 8
  width = sum(p.width for p in pictures) + gap * (len(pictures) + 1)
  title_font, body_font = _font(18), _font(15)
  lines = _wrap(text, body_font, width - 2 * gap)
  strip = 34 + 20 * len(lines) + gap
  height = max(p.height for p in pictures) + 2 * gap + strip
  panel = Image.new("RGB", (width, height), (255, 255, 255))
  x = gap
  for picture in pictures:
    panel.paste(picture, (x, gap))
    x += picture.width + gap
  draw = ImageDraw.Draw(panel)
  y = max(p.height for p in pictures) + 2 * gap
  draw.text((gap, y), title, fill=(0, 0, 0), font=title_font)
  for k, line in enumerate(lines):
    draw.text((gap, y + 28 + 20 * k), line, fill=(30, 30, 30), font=body_font)
  return panel


def _busiest(entries: Sequence[dict], most: int = 5) -> list[dict]:
  """Up to ``most`` entries of the image that has the most of them (first such image)."""
  counts: dict = {}
  for entry in entries:
    counts[entry["image_id"]] = counts.get(entry["image_id"], 0) + 1
  image_id = max(counts, key=counts.__getitem__)  # the first of the busiest, in file order
  return [entry for entry in entries if entry["image_id"] == image_id][:most]


def write_samples(out_dir: str, pools: dict[str, list[PoolImage]]) -> list[str]:
  """Write the sample pictures under ``out_dir/samples``; returns their relative paths."""
  datasets = os.path.join(out_dir, "datasets")
  by_id = {pool: {image.image_id: image for image in images} for pool, images in pools.items()}
  panels: dict[str, Image.Image] = {}

  vqa_root = os.path.join(datasets, DATAROOTS["vqa"])
  label2ans = load_vqa_answer_vocab(vqa_root).label2ans
  entries = load_vqa(vqa_root, "minval").entries
  shown = _busiest(entries)
  panels["vqa"] = _panel(
      [_picture(out_dir, by_id["coco"][shown[0]["image_id"]])], "VQA-style questions",
      "\n".join(f"Q: {e['question']}  A: {label2ans[e['answer']['labels'][0]]}" for e in shown))

  refer_root = os.path.join(datasets, DATAROOTS["refcoco"])
  for name, dataset, split_by in (("refcoco", "refcoco", "unc"), ("refcocog", "refcocog", "umd")):
    entry = load_refer(os.path.join(refer_root, dataset), "val", split_by).entries[0]
    image = by_id["coco"][entry["image_id"]]
    panels[name] = _panel([_picture(out_dir, image, [(entry["ref_box"], TARGET)])],
                          f"{dataset}-style referring expression",
                          f'"{entry["caption"]}" (target in green)')

  entry = load_visual7w(os.path.join(datasets, DATAROOTS["visual7w"]), "val").entries[0]
  image = by_id["genome"][entry["image_id"]]
  candidates = [(image.scene.objects[box_id % 10].box, CANDIDATE)
                for box_id in entry["gt_box_ids"] if box_id != entry["ref_id"]]
  panels["visual7w"] = _panel(
      [_picture(out_dir, image, candidates + [(entry["ref_box"], TARGET)])],
      "Visual7W-style pointing", f"Q: {entry['caption']} (answer in green, the other "
      "candidates in orange)")

  entry = load_guesswhat(os.path.join(datasets, DATAROOTS["guesswhat_pointing"]),
                         "valid").entries[0]
  image = by_id["coco"][entry["image_id"]]
  turns = "\n".join(f"{q} {a}" for q, a in zip(entry["questions"], entry["answers"]))
  panels["guesswhat"] = _panel([_picture(out_dir, image, [(entry["ref_box"], TARGET)])],
                               "GuessWhat-style dialogue", f"{turns}\n(target in green)")

  entry = load_nlvr2(os.path.join(datasets, DATAROOTS["nlvr2"]), "dev").entries[0]
  left, right = by_id["nlvr2"][entry["image_id_0"]], by_id["nlvr2"][entry["image_id_1"]]
  truth = "True" if entry["answer"]["labels"][0] == 1 else "False"
  panels["nlvr2"] = _panel([_picture(out_dir, left), _picture(out_dir, right)],
                           "NLVR2-style statement", f"{entry['sentence']} -> {truth}")

  entries = _busiest(load_snli_ve(os.path.join(datasets, DATAROOTS["snli_ve"]), "dev").entries)
  names = {0: "contradiction", 1: "neutral", 2: "entailment"}
  panels["snli_ve"] = _panel(
      [_picture(out_dir, by_id["flickr"][entries[0]["image_id"]])], "SNLI-VE-style hypotheses",
      "\n".join(f"{e['hypothesis']} -> {names[e['answer']['labels'][0]]}" for e in entries))

  captions = load_retrieval(os.path.join(datasets, DATAROOTS["retrieval_coco"], VAL_FILE),
                            "coco", "val")
  first = by_id["coco"][captions.image_ids[0]]
  twin = pools["coco"][first.twin] if first.twin is not None else first
  text = "\n".join(
      [f"Left: {captions[k]['caption']}" for k in captions.captions_of_image[first.image_id]][:3]
      + [f"Right (its twin, a hard negative): {captions[k]['caption']}"
         for k in captions.captions_of_image.get(twin.image_id, [])][:3])
  panels["retrieval"] = _panel([_picture(out_dir, first), _picture(out_dir, twin)],
                               "Retrieval captions and a twin image", text)

  os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)
  written = []
  for name, panel in panels.items():
    path = os.path.join("samples", f"{name}.png")
    panel.save(os.path.join(out_dir, path), format="PNG")
    written.append(path)
  return written
