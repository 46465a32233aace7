"""`twelve-in-one generate`: write the generated mini 12-in-1 release.

    twelve-in-one generate --out /tmp/twelve_in_one_data
    twelve-in-one generate --out DIR --seed 1 --num_images 640 --num_regions 36

Renders seeded synthetic scenes, computes region features from their pixels and writes all
twelve datasets in the official release formats under `DIR/datasets` (read by `prepare` with the
same readers as real data), the rendered images under `DIR/images`, sample pictures under
`DIR/samples` and `DIR/summary.json` (settings, counts, chance levels). Running it again on a
complete `DIR` with the same flags does nothing.
"""

from __future__ import annotations

from absl import flags

from twelve_in_one.data.generate import generate

_OUT = flags.DEFINE_string("out", None, "output folder (must not exist, or hold the same release)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of every random choice")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 320,
                                   "training scenes per image pool (COCO-, VG- and Flickr-like; "
                                   "NLVR2 gets half as many image pairs)")
_NUM_VAL_IMAGES = flags.DEFINE_integer("num_val_images", 64, "validation scenes per pool")
_NUM_TEST_IMAGES = flags.DEFINE_integer("num_test_images", 16, "test scenes per pool")
_NUM_REGIONS = flags.DEFINE_integer("num_regions", 10,
                                    "detector boxes per image (the release keeps 100)")
_PRETRAINING_CORPUS = flags.DEFINE_bool(
    "pretraining_corpus", False, "also write datasets/conceptual_caption/: one caption and the "
    "detector's class distributions per train/val scene, in the official pretraining format")
flags.mark_flag_as_required("out")


def _table(summary: dict) -> str:
  """The per-task sizes, chance levels and blind baselines of the release."""
  lines = [f"{'task':<20} {'metric':<22} {'train':>6} {'val':>6}  {'chance':>6} "
           f"{'text-only':>9} {'image-only':>10}"]
  for task, info in summary["tasks"].items():
    base = info["baselines"]
    lines.append(f"{task:<20} {base['metric']:<22} {base['train_examples']:>6} "
                 f"{base['val_examples']:>6}  {base['chance']:>6.3f} {base['text_only']:>9.3f} "
                 f"{base['image_only']:>10.3f}")
  return "\n".join(lines)


def main(argv):
  del argv
  try:
    summary = generate(_OUT.value, seed=_SEED.value, num_images=_NUM_IMAGES.value,
                       num_val_images=_NUM_VAL_IMAGES.value,
                       num_test_images=_NUM_TEST_IMAGES.value, num_regions=_NUM_REGIONS.value,
                       pretraining_corpus=_PRETRAINING_CORPUS.value, progress=print)
  except (FileExistsError, ValueError) as error:
    # A bad --out or bad sizes: one line, not a traceback.
    raise SystemExit(f"twelve-in-one generate: {error}") from error
  if summary["skipped"]:
    print(f"{summary['out_dir']} is already complete (same settings); nothing was written")
  print(_table(summary))
  print(f"release: {summary['out_dir']}/datasets   samples: {summary['out_dir']}/samples")
