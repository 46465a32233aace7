"""`twelve-in-one eval`: every task's official metric, predictions, server files and the table.

    twelve-in-one eval --config configs/twelve_in_one.py:smoke --workdir /tmp/12in1_smoke
    twelve-in-one eval --config configs/twelve_in_one.py:twelve_in_one --workdir gs://B/12in1 \\
        --tasks vqa,gqa --split test
    twelve-in-one eval --config configs/twelve_in_one.py:twelve_in_one \\
        --checkpoint ckpt/multi_task --tasks retrieval_coco --retrieval_images 5000

`--workdir` evaluates the newest checkpoint of a training run (or `--iteration`);
`--checkpoint` a params checkpoint from `twelve-in-one convert`. The run config gives the tasks
and their settings, the data and the mesh, as for `train`. Files go to `--out_dir` (default
`<workdir>/eval`): predictions/, submissions/ (VQA and GQA server format), results.md and
results.json. Every location may be local or `gs://`. See `twelve_in_one/evaluate/run.py`.
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "the run's config file[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "a training workdir (its newest checkpoint)")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a params checkpoint (twelve-in-one "
                                  "convert) or a workdir's checkpoints/<iteration>")
_ITERATION = flags.DEFINE_integer("iteration", None, "the workdir iteration to evaluate")
_TASKS = flags.DEFINE_list("tasks", None, "tasks to evaluate (default: every task of the run)")
_SPLIT = flags.DEFINE_string("split", None, "one split for every task ('val' = each task's "
                             "validation split); default: each task's official eval splits")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "where the result files go")
_RETRIEVAL_IMAGES = flags.DEFINE_integer("retrieval_images", 1000, "rank over the first N "
                                         "images of a retrieval split (the paper's 1k test "
                                         "set); 0 = all of them (e.g. COCO 5k)")
_CAPTION_CHUNK = flags.DEFINE_integer("caption_chunk", 8, "retrieval: captions per model call")
_IMAGE_CHUNK = flags.DEFINE_integer("image_chunk", 64, "retrieval: images per model call")
_MAX_BATCHES = flags.DEFINE_integer("max_batches", 0, "only the first N batches of each split "
                                    "(0 = all); for a quick look")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
    raise SystemExit("give exactly one of --workdir and --checkpoint")
  from twelve_in_one import paths
  from twelve_in_one.evaluate.run import evaluate   # heavy imports after flag parsing
  for location, flag in ((_WORKDIR.value, "--workdir"), (_CHECKPOINT.value, "--checkpoint"),
                         (_OUT_DIR.value, "--out_dir")):
    paths.check_bucket(location, flag)   # a missing bucket: one line, before the model loads
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  result = evaluate(_CONFIG.value, _WORKDIR.value or _CHECKPOINT.value, _TASKS.value,
                    _SPLIT.value, out_dir=_OUT_DIR.value, iteration=_ITERATION.value,
                    retrieval_images=_RETRIEVAL_IMAGES.value,
                    caption_chunk=_CAPTION_CHUNK.value, image_chunk=_IMAGE_CHUNK.value,
                    max_batches=_MAX_BATCHES.value)
  print(result["table"])
  print(f"wrote {result['out_dir']} in {result['seconds']} s")
