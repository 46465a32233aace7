"""`twelve-in-one predict`: one image, one text, one task, from a checkpoint.

    # the generated benchmark: features, answer strings and the picture come from the release
    twelve-in-one predict --checkpoint /tmp/12in1_smoke --config configs/twelve_in_one.py:smoke \\
        --release_dir /tmp/12in1_smoke/release --image_id 100001 --task refcoco \\
        --text "the small blue object at the bottom" --visualize refcoco.png
    # any features: an LMDB (with --image_id), an .npz (features, boxes, image_w, image_h) or a
    # bottom-up TSV row
    twelve-in-one predict --checkpoint ckpt/multi_task --features img.npz --task vqa \\
        --text "what is the man holding?" --release_dir /data/12-in-1 --top_k 5

`--checkpoint` is a params checkpoint (`twelve-in-one convert`) or a training workdir (which
needs the run's `--config`). With `--config`, the task's settings (text length, regions) are
the run's. NLVR2 takes two images: `--image_id a,b`. `--visualize` draws the image (from
`--image`, else the release's picture when there is one, else a plain canvas of the stored
size) with the chosen box and top regions or the answer, and the co-attention map.
`--checkpoint`, `--features` (an .npz), `--image` and `--visualize` may be `gs://` locations.
"""

from __future__ import annotations

import json
import os

from absl import flags, logging
from ml_collections import config_flags

from twelve_in_one import paths

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "params checkpoint or training workdir",
                                  required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "the run's config (needed for a "
                                          "workdir; gives the task settings)", lock_config=True)
_TASK = flags.DEFINE_string("task", None, "task name, official name or TASKn", required=True)
_TEXT = flags.DEFINE_string("text", None, "question / expression / caption / statement",
                            required=True)
_FEATURES = flags.DEFINE_string("features", None, "feature LMDB directory, .npz or .tsv "
                                "(default: the task's LMDB in --release_dir)")
_IMAGE_ID = flags.DEFINE_list("image_id", None, "image id(s) in the feature file (two for "
                              "NLVR2)")
_RELEASE_DIR = flags.DEFINE_string("release_dir", None, "an official or generated release: "
                                   "the task's features, answer strings and pictures")
_IMAGE = flags.DEFINE_string("image", None, "the image file to draw under the boxes")
_TOP_K = flags.DEFINE_integer("top_k", 5, "answers or regions to list")
_CANDIDATES = flags.DEFINE_list("candidates", None, "pointing: region indices to choose from")
_VISUALIZE = flags.DEFINE_string("visualize", None, "write a picture of the prediction here")
_TRUNCATE = flags.DEFINE_bool("truncate", False, "cut a text longer than the task allows")
_JSON = flags.DEFINE_bool("json", False, "print the result as JSON")


def find_release_image(release_dir: str, image_id: str) -> str | None:
  """The generated release's picture of a feature key (`images/<pool>/<key>.png`), if any."""
  images = paths.as_path(release_dir) / "images"   # epath: the release may be on gs://
  if not images.is_dir():
    return None
  pools = sorted((pool for pool in images.iterdir() if pool.is_dir()), key=os.fspath)
  for key in (image_id, image_id.removeprefix("v7w_")):
    for name in (f"{key}.png", f"{key}.jpg"):
      for pool in pools:
        if (pool / name).is_file():
          return os.fspath(pool / name)
  return None


def _task(config, name: str):
  from twelve_in_one.tasks.registry import get_task
  from twelve_in_one.train.validate import resolve_tasks
  task = get_task(name)
  if config is not None:
    for configured in resolve_tasks(config):
      if configured.name == task.name:
        return configured
  return task


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)    # orbax logs every restore at INFO
  # Unknown task, image id not found, text too long, bad file: the message names it, and the
  # console script prints it as one line with the exit status of its kind (cli.py).
  run(_CONFIG.value)


def run(config) -> None:
  """The command without flag parsing and error reporting."""
  from twelve_in_one.evaluate.predict import load_features, predict, release_features
  from twelve_in_one.evaluate.restore import load_model
  from twelve_in_one.evaluate.sources import answer_vocabulary

  for location, flag in ((_CHECKPOINT.value, "--checkpoint"), (_FEATURES.value, "--features"),
                         (_IMAGE.value, "--image"), (_VISUALIZE.value, "--visualize")):
    paths.check_bucket(location, flag)
  task = _task(config, _TASK.value)
  release_dir = _RELEASE_DIR.value or (config.data.release_dir if config is not None else "")
  features_path = _FEATURES.value
  if features_path is None:
    if not release_dir:
      raise SystemExit("give --features (an LMDB, .npz or .tsv) or --release_dir")
    features_path = release_features(release_dir, task)
  ids = _IMAGE_ID.value or [None]
  if len(ids) != task.images_per_example:
    raise SystemExit(f"task {task.name} takes {task.images_per_example} image(s); "
                     f"--image_id gives {len(ids)}")
  # Features first: a wrong image id is reported before the model is read.
  images = [load_features(features_path, image_id) for image_id in ids]
  loaded = load_model(_CHECKPOINT.value, config)
  label2ans = answer_vocabulary(task, release_dir)
  candidates = [int(c) for c in _CANDIDATES.value] if _CANDIDATES.value else None
  prediction = predict(loaded.params, loaded.config, task, images, _TEXT.value,
                       label2ans=label2ans, top_k=_TOP_K.value, candidates=candidates,
                       attention=bool(_VISUALIZE.value), truncate=_TRUNCATE.value)
  output = prediction.to_json()
  if _JSON.value:
    print(json.dumps(output, indent=1))
  else:
    for key, value in output.items():
      print(f"{key}: {value}")
  if _VISUALIZE.value:
    from twelve_in_one.evaluate.visualize import visualize
    picture = _IMAGE.value
    if picture is None and release_dir:
      picture = find_release_image(release_dir, images[0].image_id)
    width, height = visualize(prediction, _VISUALIZE.value, image=picture)
    print(f"wrote {_VISUALIZE.value} ({width}x{height})")
