"""The Cloud TPU VM workflow against a real Cloud Storage API on localhost (fake-gcs-server).

Every location is a gs:// one: the workdir (checkpoints through orbax and tensorstore, metrics,
TensorBoard events, result tables), and the command line's errors for a bucket that does not
exist. The emulator is reached only through STORAGE_EMULATOR_HOST and TENSORSTORE_GCS_HTTP_URL
(the `gcs` fixture in conftest.py). Prepared data and init checkpoints on gs:// have their own
tests (tests/data/test_prepared_on_gcs.py, tests/test_cloud_outputs.py).
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from etils import epath

from run_configs import flat_params, tiny_config_dict
from twelve_in_one.evaluate.run import evaluate
from twelve_in_one.train import loop as loop_lib
from twelve_in_one.train.schedule import Schedule
from twelve_in_one.train.validate import run_model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=300):
  """`twelve-in-one ARGS` in a fresh process (which inherits the emulator's variables)."""
  return subprocess.run([sys.executable, "-m", "twelve_in_one.cli", *args], capture_output=True,
                        text=True, cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def preempted_run(gcs, tiny_straight_run):
  """A tiny run in gs://runs/tiny, preempted by SIGTERM at iteration 1 and again at 4, then
  resumed to the end: (workdir, final parameters, the straight local run's parameters)."""
  bucket = gcs.create_bucket("runs")
  workdir = f"{bucket}/tiny"
  config = tiny_config_dict(tasks="vqa,refcoco", **{"schedule.num_epochs": 6,
                                                    "checkpoint.every_iterations": 2})
  original = Schedule.tasks_at
  with pytest.MonkeyPatch.context() as patch:
    for stop_at in (1, 4):
      def tasks_at(self, iteration, stop_at=stop_at):
        if iteration == stop_at:
          os.kill(os.getpid(), signal.SIGTERM)
        return original(self, iteration)

      patch.setattr(Schedule, "tasks_at", tasks_at)
      run = loop_lib.train_and_evaluate(config, workdir)
      assert run.preempted and run.iterations == stop_at + 1
  resumed = loop_lib.train_and_evaluate(config, workdir)
  assert not resumed.preempted and resumed.iterations == 6
  _, expected = tiny_straight_run
  return workdir, flat_params(resumed.state.params), expected


def test_sigterm_and_resume_in_a_bucket_is_bitwise_identical(gcs, preempted_run):
  workdir, got, expected = preempted_run
  assert got.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  names = gcs.object_names("runs", "tiny/")
  steps = {name.split("/")[2] for name in names if name.startswith("tiny/checkpoints/")}
  # Saves every 2 iterations plus the SIGTERM saves after iterations 1 and 4; keep=3 newest.
  assert {"2", "4", "5", "6"} >= {s for s in steps if s.isdigit()} >= {"4", "6"}
  assert not any("tmp" in step for step in steps), steps   # no half-written step is left


def test_metrics_tensorboard_and_results_land_in_the_bucket(gcs, preempted_run,
                                                           tiny_straight_run):
  workdir, _, _ = preempted_run
  straight_dir, _ = tiny_straight_run
  root = epath.Path(workdir)
  records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
  train = {(r["iteration"], r["task"]) for r in records if r.get("kind") == "train"}
  # Three processes wrote the log in turn, each continuing the bucket's file: every (iteration,
  # task) update of the uninterrupted run is there (DSG leaves some tasks out of some
  # iterations, in both runs alike).
  straight = [json.loads(line) for line in (straight_dir / "metrics.jsonl").read_text()
              .splitlines()]
  assert train == {(r["iteration"], r["task"]) for r in straight if r.get("kind") == "train"}
  assert {i for i, _ in train} >= {1, 2, 3, 5}
  assert sum(1 for r in records if "note" in r and "SIGTERM" in r["note"]) == 2
  events = [n for n in gcs.object_names("runs", "tiny/tensorboard/")
            if "events.out.tfevents" in n]
  assert len(events) == 3       # one event file per process that ran
  results = json.loads((root / "results.json").read_text())
  assert set(results) == {"vqa", "refcoco"} and results["vqa"]["metric"] == "soft accuracy"
  assert "| refcoco |" in (root / "results.md").read_text()


def test_eval_and_plot_read_the_bucket_and_write_into_it(gcs, preempted_run):
  workdir, _, _ = preempted_run
  config = tiny_config_dict(tasks="vqa,refcoco")
  answers = run_model_config(config).num_vqa_answers
  vocab = {"vqa": [f"answer {i}" for i in range(answers)]}
  result = evaluate(config, workdir, split="val", label2ans=vocab, progress=False)
  assert result["iteration"] == 6 and result["out_dir"] == f"{workdir}/eval"
  names = set(gcs.object_names("runs", "tiny/eval/"))
  assert {"tiny/eval/results.md", "tiny/eval/results.json", "tiny/eval/predictions/vqa_minval.json",
          "tiny/eval/predictions/refcoco_val.json"} <= names, names
  saved = json.loads(epath.Path(f"{workdir}/eval/results.json").read_text())
  for task in ("vqa", "refcoco"):
    (split, entry), = result["tasks"][task].items()
    assert saved["tasks"][task][split]["score"] == pytest.approx(entry["score"])
    records = json.loads(epath.Path(f"{workdir}/eval/predictions/{task}_{split}.json")
                         .read_text())
    assert len(records) == entry["examples"] > 0

  plotted = _cli("plot", f"--workdir={workdir}", timeout=120)
  assert plotted.returncode == 0, plotted.stderr[-2000:]
  png = epath.Path(f"{workdir}/training_curves.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_missing_bucket_is_one_clear_line(gcs, tmp_path):
  run = _cli("train", f"--config={REPO}/configs/twelve_in_one.py:tiny",
             "--workdir=gs://no-such-bucket/run")
  assert run.returncode == 1, run.stderr[-2000:]
  lines = run.stderr.strip().splitlines()
  assert lines[-1] == ("twelve-in-one train: error: --workdir gs://no-such-bucket/run: bucket "
                       "gs://no-such-bucket does not exist or this machine's credentials cannot "
                       "see it; create it (`gcloud storage buckets create gs://no-such-bucket`) "
                       "or fix the path")
  assert "Traceback" not in run.stderr
