"""The pretraining corpus of a run: generated and prepared when the config asks for it.

With `config.data.generate_if_missing` (the `smoke` variant), a fresh machine needs nothing
downloaded: the mini 12-in-1 release is generated with its Conceptual Captions-style corpus
(`generate(..., pretraining_corpus=True)`) into `config.data.release_dir` (default
`<workdir>/release`, or this machine's cache for a gs:// workdir, as for multi-task training),
and prepared into `config.data.data_dir` (default `<workdir>/prepared`) with the run's
`max_seq_length` and `max_boxes`. Both steps are idempotent, so a rerun or a resumed run reuses
them. Otherwise `config.data.data_dir` must hold a corpus `twelve-in-one prepare --task
conceptual_captions` wrote.
"""

from __future__ import annotations

import logging
import os

from twelve_in_one.data.concap.prepared import PreparedCorpus, open_corpus


def ensure_corpus(config, workdir: str) -> None:
  """Generates and prepares the embedded corpus when configured (fills the data paths)."""
  if not config.data.generate_if_missing:
    return
  from twelve_in_one.data.concap.prepare import prepare_corpus
  from twelve_in_one.data.generate import generate, read_summary
  from twelve_in_one.train.entry import generated_release_dir

  root = config.data.release_dir or generated_release_dir(workdir)
  with config.unlocked():
    config.data.data_dir = config.data.data_dir or os.path.join(workdir, "prepared")
    config.data.release_dir = root
  summary = read_summary(root)
  if summary is None:
    logging.info("generating the mini 12-in-1 release with its pretraining corpus into %s", root)
    summary = generate(root, seed=config.seed, num_images=config.data.num_images,
                       num_val_images=config.data.num_val_images, pretraining_corpus=True)
  if not summary.get("pretraining_corpus"):
    raise ValueError(f"config.data.release_dir {root}: a generated release without the "
                     "pretraining corpus; generate one with `twelve-in-one generate "
                     "--pretraining_corpus` or leave release_dir empty")
  prepare_corpus(os.path.join(root, "datasets"), config.data.data_dir,
                 vocab_path=config.data.vocab or None,
                 max_seq_length=config.data.max_seq_length, max_boxes=config.data.max_boxes,
                 progress=False, log=logging.info)


def open_checked_corpus(config) -> PreparedCorpus:
  """The prepared corpus, with the config's splits and shapes checked against it."""
  corpus = open_corpus(config.data.data_dir)
  for key in ("train_split", "val_split"):
    split = config.data[key]
    if split and split not in corpus.splits:
      raise ValueError(f"config.data.{key}={split!r}: not prepared in {config.data.data_dir}; "
                       f"prepared splits: {corpus.splits}")
  layout = corpus.layout
  for key, value in (("max_seq_length", layout.max_seq_length),
                     ("max_boxes", layout.max_boxes)):
    if config.data[key] != value:
      raise ValueError(f"config.data.{key}={config.data[key]}, but the corpus in "
                       f"{config.data.data_dir} was prepared with {key}={value}; set "
                       f"--config.data.{key}={value} (the shapes are fixed when the corpus is "
                       "prepared)")
  return corpus
