"""Input-pipeline throughput: examples/s per core for VQA shapes, array_record -> host batches.

    .venv/bin/python benchmarks/input_pipeline.py [--images 1000] [--questions 8000]
        [--batch_size 32] [--batches 150] [--threads 0,2] [--workdir /tmp/tio_bench]
        [--gcs_emulator | --data_dir gs://BUCKET/PATH] [--decoding=500]

Writes a VQA-format release (a feature LMDB of `--images` images x 100 boxes x 2048 float32,
questions, soft targets, the 3129-answer vocabulary), prepares it with `twelve-in-one prepare`
(official VQA shapes: 23 stored tokens + the task token = 24, 101 regions x 2048 float16), and
times the training pipeline (shuffle, read both records, assemble, batch, float16 -> float32)
over the prepared array_record files. "Per core" is examples per second of process CPU time
(all threads); with `--threads 0` everything runs in the calling thread. The files are in the
page cache (just written), so this is the CPU cost, not a disk benchmark.

With `--data_dir gs://...` (a real bucket) or `--gcs_emulator` (a local fake-gcs-server, the
tests' `tests/gcs_emulator.py`, at gs://input-bench/prepared) the prepared data lives on Cloud
Storage: it also times prepare's upload (MB/s), the first `open_prepared` (the copy to a fresh
local mirror under `--workdir`: seconds and MB/s) and a second one (the mirror reused), then
the pipeline reads the mirror as above. prepare always rebuilds then, so the upload is timed.

`--decoding=N` also times the two places where the pipeline decodes with its own code instead
of the library's, on the same data: TFDS's generic decoding of a serialized record against
`tfds_format.RecordDecoder` (on the first N example and N image records, already read), and
one batch's float16 region features to float32, numpy's cast into the batch buffer
(`np.copyto`) against `pipeline.float16_to_float32`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pickle
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from twelve_in_one import paths
from twelve_in_one.data import pipeline
from twelve_in_one.data.features import write_feature_lmdb
from twelve_in_one.data.prepare import prepare
from twelve_in_one.data.tfds_format import EXAMPLES, IMAGES, open_prepared
from twelve_in_one.tasks.registry import get_task

NUM_ANSWERS = 3129


def write_vqa_release(root: Path, num_images: int, num_questions: int, seed: int = 0) -> None:
  """A VQA release in the official layout with random features and questions."""
  rng = np.random.default_rng(seed)
  task = get_task("vqa")
  lmdb_path = root / "datasets" / task.features
  lmdb_path.parent.mkdir(parents=True, exist_ok=True)

  def images():
    for image_id in range(num_images):
      x1 = rng.uniform(0, 300, 100)
      y1 = rng.uniform(0, 200, 100)
      boxes = np.stack([x1, y1, x1 + rng.uniform(1, 300, 100), y1 + rng.uniform(1, 200, 100)], 1)
      yield {"image_id": image_id, "image_h": 480, "image_w": 640, "boxes": boxes,
             "features": np.maximum(rng.standard_normal((100, 2048), np.float32), 0) * 2}

  write_feature_lmdb(lmdb_path, images(), map_size=1 << 36)
  dataroot = root / "datasets" / task.dataroot
  (dataroot / "cache").mkdir(parents=True, exist_ok=True)
  words = ["what", "is", "the", "color", "of", "man", "holding", "left", "many", "dogs",
           "are", "there", "in", "picture", "on", "table", "kind", "animal", "this", "room"]
  questions = [{"question_id": q, "image_id": int(rng.integers(num_images)),
                "question": " ".join(rng.choice(words, int(rng.integers(4, 14)))) + "?"}
               for q in range(num_questions)]
  (dataroot / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(
      json.dumps({"questions": questions}))
  (dataroot / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(
      json.dumps({"questions": questions[:10]}))
  targets = [{"question_id": q["question_id"], "image_id": q["image_id"],
              "labels": [int(a) for a in rng.choice(NUM_ANSWERS, 3, replace=False)],
              "scores": [1.0, 0.6, 0.3]} for q in questions]
  (dataroot / "cache" / "train_target.pkl").write_bytes(pickle.dumps(targets))
  (dataroot / "cache" / "val_target.pkl").write_bytes(pickle.dumps(targets[:10]))
  answers = [f"answer {k}" for k in range(NUM_ANSWERS)]
  (dataroot / "cache" / "trainval_ans2label.pkl").write_bytes(
      pickle.dumps({answer: k for k, answer in enumerate(answers)}))
  (dataroot / "cache" / "trainval_label2ans.pkl").write_bytes(pickle.dumps(answers))


def time_pipeline(task, data_dir: Path | str, batch_size: int, batches: int, threads: int) -> dict:
  """Wall and CPU time of `batches` training batches after a short warm-up."""
  iterator = pipeline.task_iterator(task, data_dir, "train", seed=0,
                                    batch_size_per_process=batch_size, read_threads=threads)
  for _ in range(5):
    batch = next(iterator)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(iterator)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  examples = batches * batch_size
  assert batch["image_feat"].shape == (batch_size, 101, 2048)
  assert batch["image_feat"].dtype == np.float32 and batch["input_ids"].shape == (batch_size, 23)
  return {"threads": threads, "examples_per_s": examples / wall,
          "examples_per_cpu_s": examples / cpu, "cpu_cores_busy": cpu / wall}


def _best_seconds(run, repeats: int = 5) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return best


def time_decoding(task, data_dir: Path | str, records: int, batch_size: int) -> None:
  """TFDS's decoding against `RecordDecoder`; numpy's float16 cast against the pipeline's."""
  prepared = open_prepared(task, data_dir)
  for config in (EXAMPLES, IMAGES):
    source = prepared.source(config, "train")
    raw, decode = prepared.raw_source(config, "train")
    serialized = [raw[index] for index in range(min(records, len(raw)))]
    features, decoders = source.dataset_info.features, getattr(source, "decoders", None)
    generic = _best_seconds(lambda records=serialized, features=features, decoders=decoders: [
        features.deserialize_example_np(record, decoders=decoders) for record in records])
    ours = _best_seconds(lambda records=serialized, decode=decode: [decode(r) for r in records])
    per_record = 1e6 / len(serialized)
    print(f"  decoding {config} ({len(serialized)} records): TFDS {generic * per_record:.1f} "
          f"us/record, RecordDecoder {ours * per_record:.1f} us/record ({generic / ours:.2f}x)")
  halves = np.stack([decode(raw[index % len(raw)])["image_feat"] for index in range(batch_size)])
  out = np.empty(halves.shape, np.float32)
  cast = _best_seconds(lambda: np.copyto(out, halves, casting="unsafe"))
  ours = _best_seconds(lambda: pipeline.float16_to_float32(halves, out))
  per_value = 1e9 / halves.size
  print(f"  float16 -> float32, {halves.shape} ({halves.size / 1e6:.1f}M values): numpy "
        f"{cast * per_value:.2f} ns/value, float16_to_float32 {ours * per_value:.2f} ns/value "
        f"({cast / ours:.2f}x)")


@contextlib.contextmanager
def emulated_bucket() -> Iterator[str]:
  """A fake-gcs-server on localhost (the tests' tooling) with one bucket; yields its data_dir."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "tests"))
  from gcs_emulator import running_emulator  # noqa: PLC0415 - test tooling, only for this flag
  with running_emulator() as emulator:
    os.environ.update(emulator.env)
    yield emulator.create_bucket("input-bench") + "/prepared"


def time_remote(task, release: Path, data_dir: str) -> None:
  """Prepare into gs:// (upload timed), then the first (copying) and second open_prepared."""
  start = time.perf_counter()
  summary = prepare(task, release, data_dir, splits=["train"], clean=False, overwrite=True,
                    progress=False, log=lambda line: None)
  total = time.perf_counter() - start
  megabytes = summary.uploaded_bytes / 1e6
  print(f"prepare -> {data_dir}: {total:.1f} s in all, of which the upload {megabytes:.0f} MB "
        f"in {summary.upload_seconds:.1f} s ({megabytes / summary.upload_seconds:.0f} MB/s)")
  mirror = paths.local_mirror_of(f"{data_dir}/{task.name}")
  shutil.rmtree(os.fspath(mirror), ignore_errors=True)
  start = time.perf_counter()
  open_prepared(task, data_dir)
  first = time.perf_counter() - start
  copied = sum(os.path.getsize(os.fspath(f)) for f in paths.files_under(mirror)) / 1e6
  start = time.perf_counter()
  open_prepared(task, data_dir)
  again = time.perf_counter() - start
  print(f"first open_prepared: {copied:.0f} MB copied to the local mirror in {first:.1f} s "
        f"({copied / first:.0f} MB/s); second (mirror reused): {again * 1e3:.0f} ms")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=1000)
  parser.add_argument("--questions", type=int, default=8000)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--batches", type=int, default=150)
  parser.add_argument("--threads", default="0,2", help="read threads to time, comma-separated")
  parser.add_argument("--workdir", default="/tmp/twelve_in_one_input_bench")
  parser.add_argument("--decoding", type=int, default=0, metavar="N",
                      help="also time record decoding on N records and the float16 cast (0: no)")
  where = parser.add_mutually_exclusive_group()
  where.add_argument("--data_dir", default=None,
                     help="a gs:// URL to prepare into and read from (default: --workdir)")
  where.add_argument("--gcs_emulator", action="store_true",
                     help="prepare into a local Cloud Storage emulator (gs://input-bench)")
  args = parser.parse_args()
  workdir = Path(args.workdir)
  release, data_dir = workdir / "release", workdir / "prepared"
  if not (release / "datasets").is_dir():
    start = time.perf_counter()
    write_vqa_release(release, args.images, args.questions)
    print(f"wrote the release in {time.perf_counter() - start:.1f} s")
  task = get_task("vqa")
  with contextlib.ExitStack() as stack:
    if args.gcs_emulator or args.data_dir:
      # Mirrors go under --workdir, not the user's cache.
      os.environ[paths.CACHE_ENV] = os.fspath(workdir / "cache")
      data_dir = stack.enter_context(emulated_bucket()) if args.gcs_emulator else args.data_dir
      time_remote(task, release, data_dir)
    else:
      start = time.perf_counter()
      summary = prepare(task, release, data_dir, splits=["train"], clean=False, progress=False,
                        log=lambda line: None)
      if not summary.up_to_date:
        seconds = time.perf_counter() - start
        print(f"prepare: {args.images} images + {args.questions} questions in {seconds:.1f} s "
              f"({args.images / seconds:.0f} images/s)")
    print(f"{datetime.date.today()}  {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; VQA train, batch {args.batch_size}, 23+1 tokens, "
          f"101 x 2048 regions (float16 stored -> float32 batches), read from {data_dir}")
    for threads in (int(value) for value in args.threads.split(",")):
      row = time_pipeline(task, data_dir, args.batch_size, args.batches, threads)
      print(f"  read_threads={row['threads']}: {row['examples_per_s']:7.0f} examples/s wall, "
            f"{row['examples_per_cpu_s']:7.0f} examples/s per core "
            f"({row['cpu_cores_busy']:.2f} cores busy)")
    if args.decoding:
      time_decoding(task, data_dir, args.decoding, args.batch_size)


if __name__ == "__main__":
  main()
