"""Init checkpoints, convert exports, evaluation files and pictures on Cloud Storage (gs://).

Every location goes through `etils.epath`, so a bucket must give the same bytes as a disk: the
official fixture's state dict read from a bucket initialises bitwise the same parameters as
the local file, an export written to a bucket reads back bitwise, and evaluation, plot and
predict write their files into the bucket. The bucket is fake-gcs-server on localhost (the
`gcs` fixture in conftest.py); the training workdir on gs:// has its own tests (test_cloud.py).
"""

from __future__ import annotations

import collections
import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from etils import epath
from PIL import Image

from twelve_in_one import paths
from twelve_in_one.interop import checkpoint_io
from twelve_in_one.interop.official import export_official, import_official, official_init
from twelve_in_one.models import ViLBertConfig
from twelve_in_one.train.init_checkpoint import load_init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BERT_PREFIXES = ("bert.embeddings.", "bert.encoder.layer.", "cls.predictions.")


@pytest.fixture(scope="module")
def bucket(gcs) -> str:
  return gcs.create_bucket("cloud-outputs")


@pytest.fixture(scope="module")
def tiny(fixture_dir) -> tuple[ViLBertConfig, collections.OrderedDict[str, np.ndarray]]:
  """The fixture's model config and its official state dict (read from the local .npz)."""
  return (ViLBertConfig.from_json(fixture_dir / "tiny_config.json"),
          checkpoint_io.read_state_dict(fixture_dir / "tiny_state_dict.npz"))


def _upload(local: os.PathLike, remote: str) -> str:
  paths.copy_file(epath.Path(local), epath.Path(remote))
  return remote


def _init(config: ViLBertConfig, checkpoint: str = "", bert: str = ""):
  """`load_init_params` with a run config holding only `config.init` and the seed."""
  run = ml_collections.ConfigDict(dict(seed=0, init=dict(checkpoint=checkpoint, bert=bert,
                                                         ignore_unexpected=False)))
  return load_init_params(run, config, official_init(config, 0))


def _leaves(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_bitwise_equal(got, expected) -> None:
  got, expected = _leaves(got), _leaves(expected)
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
    assert np.array_equal(got[key], value), key


def _cli(*args: str) -> subprocess.CompletedProcess:
  """`twelve-in-one ARGS` in a fresh process (command modules define absl flags at import)."""
  return subprocess.run([sys.executable, "-m", "twelve_in_one.cli", *args], capture_output=True,
                        text=True, cwd=REPO, timeout=300)


def test_init_checkpoint_files_from_a_bucket_equal_the_local_file(bucket, tiny, fixture_dir,
                                                                   tmp_path):
  config, state = tiny
  expected, report = _init(config, checkpoint=str(fixture_dir / "tiny_state_dict.bin"))
  assert "245 parameters loaded" in report
  remote = {"bin": _upload(fixture_dir / "tiny_state_dict.bin", f"{bucket}/init/official.bin"),
            "npz": _upload(fixture_dir / "tiny_state_dict.npz", f"{bucket}/init/state.npz")}
  # Written straight into the bucket: the export writers take gs:// too.
  remote["safetensors"] = f"{bucket}/init/state.safetensors"
  checkpoint_io.write_safetensors(remote["safetensors"], state)
  if importlib.util.find_spec("torch") is not None:   # the legacy (pre-1.6) torch layout
    import torch
    legacy = tmp_path / "legacy.bin"
    torch.save(collections.OrderedDict((k, torch.from_numpy(v)) for k, v in state.items()),
               legacy, _use_new_zipfile_serialization=False)
    remote["legacy bin"] = _upload(legacy, f"{bucket}/init/legacy.bin")
  for kind, location in remote.items():
    params, report = _init(config, checkpoint=location)
    assert_bitwise_equal(params, expected)
    assert f"{location}" in report and "245 parameters loaded" in report, kind


def test_init_folders_from_a_bucket_bert_and_our_export(bucket, tiny, tmp_path):
  config, state = tiny
  # A HF BERT model folder: the fixture's text stream and masked-LM head under BERT names.
  bert = {name: value for name, value in state.items()
          if name.startswith(BERT_PREFIXES) and "task_embeddings" not in name}
  hf_config = json.dumps({"hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
                          "num_attention_heads": config.num_attention_heads,
                          "num_hidden_layers": config.num_hidden_layers, "hidden_act": "gelu"})
  for folder in (str(tmp_path / "bert"), f"{bucket}/bert"):
    checkpoint_io.write_safetensors(f"{folder}/model.safetensors", bert)
    paths.write_text_atomically(f"{folder}/config.json", hf_config)
  local, local_report = _init(config, bert=str(tmp_path / "bert"))
  remote, remote_report = _init(config, bert=f"{bucket}/bert")
  assert_bitwise_equal(remote, local)
  assert f"BERT weights from {bucket}/bert/model.safetensors: " in remote_report
  assert local_report.split(": ", 1)[1] == remote_report.split(": ", 1)[1]

  # Our export folder (orbax params + config + meta), written into the bucket.
  params, _ = import_official(state, config, rng=5)
  checkpoint_io.save_params(f"{bucket}/export", params, config)
  loaded, report = _init(config, checkpoint=f"{bucket}/export")
  assert_bitwise_equal(loaded, params)
  assert report == f"{bucket}/export: loaded our checkpoint (model 24-wide)"


def test_missing_bucket_or_file_for_init_is_one_line(gcs, bucket, tiny):
  config, _ = tiny
  with pytest.raises(paths.LocationError) as error:
    _init(config, checkpoint="gs://no-such-bucket-for-init/pretrained_model.bin")
  assert str(error.value) == (
      "config.init.checkpoint gs://no-such-bucket-for-init/pretrained_model.bin: bucket "
      "gs://no-such-bucket-for-init does not exist or this machine's credentials cannot see it; "
      "create it (`gcloud storage buckets create gs://no-such-bucket-for-init`) or fix the path")
  with pytest.raises(paths.LocationError) as error:
    _init(config, checkpoint=f"{bucket}/none/pretrained_model.bin")
  assert str(error.value) == (
      f"config.init.checkpoint {bucket}/none/pretrained_model.bin: no such file or folder; "
      "expected an official .bin/.pt, .npz or .safetensors state dict, or a folder written by "
      "`twelve-in-one convert`")
  with pytest.raises(paths.LocationError, match=r"^config.init.bert gs://no-such-bucket-for-"
                                                r"init/bert: bucket .* does not exist"):
    _init(config, bert="gs://no-such-bucket-for-init/bert")


def test_convert_into_a_bucket_reads_back_bitwise_and_unfinished_exports_are_refused(
    gcs, bucket, tiny, fixture_dir, monkeypatch):
  config, state = tiny
  source = _upload(fixture_dir / "tiny_state_dict.bin", f"{bucket}/convert/official.bin")
  config_json = _upload(fixture_dir / "tiny_config.json", f"{bucket}/convert/config.json")
  run = _cli("convert", f"--input={source}", f"--config={config_json}",
             f"--output={bucket}/convert/ours")
  assert run.returncode == 0, run.stderr[-2000:]
  assert f"wrote {bucket}/convert/ours" in run.stdout
  names = gcs.object_names("cloud-outputs", "convert/ours/")
  assert {"convert/ours/config.json", "convert/ours/meta.json"} <= set(names)
  assert any(name.startswith("convert/ours/params/") for name in names)
  params, stored_config, meta = checkpoint_io.load_params(f"{bucket}/convert/ours")
  assert_bitwise_equal(params, import_official(state, config)[0])
  assert stored_config == config and meta["source"] == source

  # Overwriting a bucket folder replaces it (there is no rename to swap it in).
  other = official_init(config, 1)
  with pytest.raises(FileExistsError, match="already exists"):
    checkpoint_io.save_params(f"{bucket}/convert/ours", other, config)
  checkpoint_io.save_params(f"{bucket}/convert/ours", other, config, meta={"n": 2},
                            overwrite=True)
  params, _, meta = checkpoint_io.load_params(f"{bucket}/convert/ours")
  assert_bitwise_equal(params, other) and meta == {"n": 2}

  # An export interrupted before its last file (meta.json) is refused, in one line.
  real_write = paths.write_text_atomically

  def write(path, text):
    if os.fspath(path).endswith(checkpoint_io.META_FILE):
      raise KeyboardInterrupt   # the process is stopped before the metadata is written
    real_write(path, text)

  monkeypatch.setattr(paths, "write_text_atomically", write)
  with pytest.raises(KeyboardInterrupt):
    checkpoint_io.save_params(f"{bucket}/convert/cut", other, config)
  monkeypatch.undo()
  assert f"convert/cut/{checkpoint_io.CONFIG_FILE}" in gcs.object_names("cloud-outputs",
                                                                         "convert/cut/")
  with pytest.raises(FileNotFoundError) as error:
    checkpoint_io.load_params(f"{bucket}/convert/cut")
  assert str(error.value) == (
      f"{bucket}/convert/cut: incomplete params checkpoint: no meta.json, which is written last, "
      "so the export that wrote it did not finish; write it again (`twelve-in-one convert ... "
      "--overwrite`)")
  with pytest.raises(FileNotFoundError, match="incomplete params checkpoint"):
    _init(config, checkpoint=f"{bucket}/convert/cut")

  # ours -> official, from the bucket into the bucket.
  run = _cli("convert", "--direction=export", f"--input={bucket}/convert/ours",
             f"--output={bucket}/convert/official", "--format=npz")
  assert run.returncode == 0, run.stderr[-2000:]
  back = checkpoint_io.read_state_dict(f"{bucket}/convert/official/state_dict.npz")
  expected = export_official(other, config)    # the overwritten parameters, official names
  assert list(back) == list(expected) and sorted(back) == sorted(state)
  assert all(np.array_equal(back[name], value) for name, value in expected.items())
  assert ViLBertConfig.from_official_dict(json.loads(epath.Path(
      f"{bucket}/convert/official/config.json").read_text())) == config


def test_evaluate_a_bucket_workdir_writes_its_files_into_the_bucket(gcs, bucket):
  # Imported here: the evaluation stack is the heaviest import of this file.
  from run_configs import tiny_run_config
  from twelve_in_one.evaluate import submission
  from twelve_in_one.evaluate.run import evaluate
  from twelve_in_one.models import ViLBertForVLTasks, init_params, tiny_config
  from twelve_in_one.train.checkpoint import Checkpointer
  from twelve_in_one.train.steps import create_state
  config = tiny_config()
  params = init_params(ViLBertForVLTasks(config), jax.random.key(0))
  workdir = f"{bucket}/run"
  checkpointer = Checkpointer(workdir, asynchronous=False)
  checkpointer.save(5, create_state(params), {"iteration": 5}, wait=True)
  checkpointer.close()
  run_config = tiny_run_config("vqa,retrieval_flickr30k")
  vocab = {"vqa": [f"answer {i}" for i in range(config.num_vqa_answers)]}
  result = evaluate(run_config, workdir, split="val", label2ans=vocab, caption_chunk=4,
                    image_chunk=4, progress=False)
  assert result["out_dir"] == f"{workdir}/eval" and result["iteration"] == 5
  assert result["source"] == f"{workdir}/checkpoints/5"
  assert gcs.object_names("cloud-outputs", "run/eval/") == [
      "run/eval/official/retrieval_flickr30k/val_others.json",
      "run/eval/official/retrieval_flickr30k/val_result.json",
      "run/eval/official/vqa/minval_others.json",
      "run/eval/official/vqa/minval_result.json",
      "run/eval/predictions/retrieval_flickr30k_val.json",
      "run/eval/predictions/retrieval_flickr30k_val_scores.npy",
      "run/eval/predictions/vqa_minval.json",
      "run/eval/results.json", "run/eval/results.md",
      "run/eval/submissions/vqa_vqa_minval.json"]   # and no temporary files
  out = epath.Path(workdir) / "eval"
  records = json.loads((out / "predictions/vqa_minval.json").read_text())
  assert len(records) == result["tasks"]["vqa"]["minval"]["examples"]
  server = json.loads((out / "submissions/vqa_vqa_minval.json").read_text())
  submission.validate_vqa(server)
  assert [e["answer"] for e in server] == [r["answer"] for r in records]
  with (out / "predictions/retrieval_flickr30k_val_scores.npy").open("rb") as f:
    assert np.load(f).shape == (20, 4)
  assert json.loads((out / "results.json").read_text())["tasks"]["vqa"]["minval"]["labelled"] > 0
  assert f"Evaluation of `{workdir}/checkpoints/5` (iteration 5)" in (
      out / "results.md").read_text()


def test_plot_and_predict_pictures_go_into_the_bucket(gcs, bucket, tmp_path, monkeypatch):
  from twelve_in_one.evaluate import plot
  from twelve_in_one.evaluate.predict import Prediction, load_features
  from twelve_in_one.evaluate.sources import VOCAB_FILES, answer_vocabulary
  from twelve_in_one.tasks import get_task
  from twelve_in_one.evaluate.visualize import FIGURE_SIZE, visualize
  records = [{"iteration": it, "task": task, "kind": "train", "loss": 10.0 / it,
              "score": it / 100, "in_stop": task == "refcoco" and it >= 30}
             for it in range(10, 51, 10) for task in ("vqa", "refcoco")]
  paths.write_text_atomically(f"{bucket}/curves/metrics.jsonl",
                              "".join(json.dumps(r) + "\n" for r in records))
  written = plot.plot_training(f"{bucket}/curves")
  assert written == f"{bucket}/curves/{plot.OUTPUT}"
  assert "curves/training_curves.png" in gcs.object_names("cloud-outputs", "curves/")
  picture = Image.open(io.BytesIO(epath.Path(written).read_bytes()))
  assert picture.size == (2 * plot.PANEL_SIZE[0], plot.PANEL_SIZE[1] + plot.HEADER)

  # predict --visualize: features (.npz) and the picture read from the bucket, PNG written there.
  boxes = np.asarray([(10, 10, 50, 40), (60, 20, 90, 70)], np.float32)
  features = io.BytesIO()
  np.savez(features, features=np.ones((2, 2048), np.float32), boxes=boxes, image_w=100,
           image_h=80)
  paths.write_bytes_atomically(f"{bucket}/predict/img7.npz", features.getvalue())
  image = load_features(f"{bucket}/predict/img7.npz")
  assert image.image_id == "img7" and (image.image_w, image.image_h) == (100, 80)
  photo = io.BytesIO()
  Image.new("RGB", (100, 80), (200, 30, 30)).save(photo, format="png")
  paths.write_bytes_atomically(f"{bucket}/predict/photo.png", photo.getvalue())
  regions = image.num_boxes
  prediction = Prediction(task="vqa", text="what?", tokens=["[CLS]", "what", "?", "[SEP]"],
                          result={"answers": [{"answer": "red", "probability": 0.9}]},
                          images=[image], attention=np.full((4, regions), 1.0 / regions))
  assert visualize(prediction, f"{bucket}/predict/out.png",
                   image=f"{bucket}/predict/photo.png") == FIGURE_SIZE
  drawn = Image.open(io.BytesIO(epath.Path(f"{bucket}/predict/out.png").read_bytes()))
  assert drawn.format == "PNG" and drawn.size == FIGURE_SIZE

  # The answer strings of a release in a bucket (read through a local copy in the cache).
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
  vqa, answers = get_task("vqa"), ["yes", "no", "red"]
  cache = f"{bucket}/release/datasets/{vqa.dataroot}/cache"
  for name, content in zip(VOCAB_FILES, ({a: i for i, a in enumerate(answers)}, answers)):
    paths.write_bytes_atomically(f"{cache}/{name}", pickle.dumps(content))
  assert answer_vocabulary(vqa, f"{bucket}/release") == answers

  # The command line: a missing bucket is one line naming the flag.
  run = _cli("plot", "--workdir=gs://no-such-bucket-for-plot/run")
  assert run.returncode == 1 and "Traceback" not in run.stderr
  assert run.stderr.strip().splitlines()[-1] == (
      "twelve-in-one plot: error: --workdir gs://no-such-bucket-for-plot/run: bucket "
      "gs://no-such-bucket-for-plot does not exist or this machine's credentials cannot see it; "
      "create it (`gcloud storage buckets create gs://no-such-bucket-for-plot`) or fix the path")
