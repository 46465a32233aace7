"""The pretraining job: a tiny run learns, resumes bitwise, shards, exports; its optimizer; errors.

The runs read a small corpus written here in the official release format (`write_split`) and
prepared with `prepare_corpus`: 48 training and 16 validation images of 4 regions with the
release's 2048-d features and 1601 classes, captions of 8 words from a 25-word vocabulary, so
the tiny model (vocabulary 1000) reads it as it is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from twelve_in_one.interop.convert import convert_export
from twelve_in_one.data.concap.prepare import prepare_corpus
from twelve_in_one.data.concap.release import CaptionedImage
from twelve_in_one.data.concap.writer import write_split
from twelve_in_one.interop import checkpoint_io
from twelve_in_one.interop.official import export_official, official_param_table
from twelve_in_one.models import ViLBertForVLTasks, init_params, tiny_config
from twelve_in_one.pretrain import optimizer as pretrain_optimizer
from twelve_in_one.pretrain import settings as run_settings
from twelve_in_one.pretrain import trainer
from twelve_in_one.train.init_checkpoint import load_init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["a", "man", "dog", "riding", "bicycle", "street", "red", "car", "near", "the", "park",
         "with", "two", "children", "playing", "on", "grass", "blue", "sky", "over", "city",
         "cat", "sits", "table", "small"]
NUM_BOXES, SEQ_LEN = 4, 10
NUM_TRAIN, NUM_VAL, BATCH = 48, 16, 16
STEPS = 12    # 3 steps per epoch, 4 epochs
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _load_config_module(name: str):
  spec = importlib.util.spec_from_file_location(f"twelve_in_one_{name}_config",
                                                os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _record(rng: np.random.Generator, index: int) -> CaptionedImage:
  corners = rng.uniform(0, [380, 280], size=(NUM_BOXES, 2))
  sizes = rng.uniform(20, [250, 190], size=(NUM_BOXES, 2))
  logits = 3 * rng.normal(size=(NUM_BOXES, 1601))
  target = np.exp(logits - logits.max(1, keepdims=True))
  caption = " ".join(rng.choice(WORDS, size=SEQ_LEN - 2))
  return CaptionedImage(rng.normal(size=(NUM_BOXES, 2048)).astype(np.float32),
                        (target / target.sum(1, keepdims=True)).astype(np.float32),
                        np.concatenate([corners, corners + sizes], 1).astype(np.float32),
                        NUM_BOXES, 480, 640, f"img{index}", caption)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """The prepared test corpus (its data_dir)."""
  root = tmp_path_factory.mktemp("concap")
  release = root / "conceptual_caption"
  rng = np.random.default_rng(0)
  write_split(release, "train", [_record(rng, index) for index in range(NUM_TRAIN)])
  write_split(release, "val", [_record(rng, 1000 + index) for index in range(NUM_VAL)])
  vocab = root / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
  prepare_corpus(release, root / "prepared", vocab_path=str(vocab), max_seq_length=SEQ_LEN,
                 max_boxes=NUM_BOXES, progress=False, log=lambda line: None)
  return str(root / "prepared")


def pretrain_config(data_dir: str, **changes):
  """The `tiny` variant on the test corpus, with dotted-key `changes`."""
  config = _load_config_module("pretrain").get_config("tiny")
  config.data.generate_if_missing = False
  config.data.data_dir = data_dir
  config.data.max_seq_length, config.data.max_boxes = SEQ_LEN, NUM_BOXES
  config.model.vocab_size = 0          # the tiny preset's 1000 holds the test vocabulary
  config.batch_size = BATCH
  config.schedule.num_epochs = STEPS // (NUM_TRAIN // BATCH)
  config.optimizer.lr = 1e-2
  # Saved at the epoch ends (steps 3, 6, 9, 12) only: the tests preempt around them.
  config.checkpoint.every_steps = 100
  for key, value in changes.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def _flat(params) -> dict[str, np.ndarray]:
  return {"/".join(key): np.asarray(value) for key, value in traverse_util.flatten_dict(
      jax.device_get(params)).items()}


def _records(workdir, kind: str) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [record for record in map(json.loads, lines) if record.get("kind") == kind]


@pytest.fixture(scope="module")
def straight_run(corpus_dir, tmp_path_factory):
  """One uninterrupted tiny run on the 8-device fsdp mesh: (workdir, result)."""
  workdir = tmp_path_factory.mktemp("straight")
  result = trainer.pretrain(pretrain_config(corpus_dir), str(workdir))
  assert not result.preempted and result.steps == STEPS
  return workdir, result


# ------------------------------------------------------------------ runs


def test_tiny_run_learns_logs_and_exports(straight_run):
  workdir, result = straight_run
  assert result.compilations == 1
  train = _records(workdir, "train")
  assert [record["step"] for record in train] == list(range(1, STEPS + 1))
  assert all(np.isfinite(record["loss"]) and record["lr"] > 0 for record in train[:-1])
  assert train[-1]["lr"] == 0.0          # the last update runs at lambda(total) = 0
  # Validation after every epoch, on the same masks each time: its loss falls.
  val = _records(workdir, "val")
  assert [record["epoch"] for record in val] == [0, 1, 2, 3]
  assert [entry["epoch"] for entry in result.validation] == [0, 1, 2, 3]
  assert val[0]["examples"] == NUM_VAL
  assert val[-1]["masked_lm_loss"] < val[0]["masked_lm_loss"] - 0.5
  assert val[-1]["loss"] < val[0]["loss"] - 0.5
  assert list((workdir / "tensorboard").iterdir())
  meta = json.loads((workdir / trainer.PRETRAINED_DIR / "meta.json").read_text())
  assert meta[checkpoint_io.ARCHITECTURE_KEY] == "pretraining" and meta["steps"] == STEPS
  params, _, _ = checkpoint_io.load_params(workdir / trainer.PRETRAINED_DIR)
  for name, value in _flat(result.state.params).items():
    np.testing.assert_array_equal(_flat(params)[name], value, err_msg=name)


def test_sigterm_then_resume_is_bitwise_identical(corpus_dir, straight_run, tmp_path,
                                                   monkeypatch):
  """Preempted at step 1 (before any save) and, resumed, at step 3 (right after the epoch's
  asynchronous save started); the second resume runs to the end: the straight run's
  parameters bit for bit, and its validation history."""
  workdir, expected = straight_run
  preempted = tmp_path / "preempted"
  original = run_settings.Schedule.lr_multiplier
  for stop_at in (1, 3):
    def lr_multiplier(self, step, stop_at=stop_at):
      if step == stop_at:
        os.kill(os.getpid(), signal.SIGTERM)
      return original(self, step)

    monkeypatch.setattr(run_settings.Schedule, "lr_multiplier", lr_multiplier)
    run = trainer.pretrain(pretrain_config(corpus_dir), str(preempted))
    assert run.preempted and run.steps == stop_at + 1 and run.pretrained is None
  monkeypatch.setattr(run_settings.Schedule, "lr_multiplier", original)
  resumed = trainer.pretrain(pretrain_config(corpus_dir), str(preempted))
  assert not resumed.preempted and resumed.steps == STEPS
  want = _flat(expected.state.params)
  got = _flat(resumed.state.params)
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  assert resumed.validation == expected.validation
  # Each logged training step's loss is the straight run's (the same masks and batches).
  losses = {r["step"]: r["loss"] for r in _records(preempted, "train")}
  assert losses == {r["step"]: r["loss"] for r in _records(workdir, "train")}
  # Run again once finished: nothing is trained, the export is there.
  again = trainer.pretrain(pretrain_config(corpus_dir), str(preempted))
  assert again.steps == STEPS and again.compilations == 0 and again.pretrained


def test_sharded_run_equals_the_single_device_run(corpus_dir, straight_run, tmp_path):
  """The 8-device fsdp run against one device: every step's losses to the float32 parity
  bound, and the parameters to float32 rounding.

  Adam divides each gradient coordinate by its own running scale, so where a coordinate's
  gradient is near zero, the rounding of the sharded sums can change its update by far more
  than a rounding. The attention key biases are all such coordinates (their gradient is zero
  in exact arithmetic, so both runs move them by rounding noise alone); elsewhere at most one
  in a hundred may differ beyond rounding. No element may differ by a hundredth of one step
  (lr): a sharding error, a missing or doubled reduction or a misplaced batch row, changes
  the updates by whole steps.
  """
  workdir, sharded = straight_run
  config = pretrain_config(corpus_dir)
  single = trainer.pretrain(config, str(tmp_path / "single"), devices=jax.devices()[:1])
  leaf = sharded.state.params["bert"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
  assert "fsdp" in str(leaf.sharding.spec) and len(leaf.sharding.device_set) == 8
  for got, want in zip(_records(workdir, "train"), _records(tmp_path / "single", "train"),
                       strict=True):
    for key in ("loss", "masked_lm_loss", "masked_img_loss", "next_sentence_loss"):
      assert abs(got[key] - want[key]) <= 1e-5 * max(1.0, abs(want[key])), (key, got, want)
  lr = config.optimizer.lr
  ours, theirs = _flat(sharded.state.params), _flat(single.state.params)
  for name, value in theirs.items():
    difference = np.abs(ours[name] - value)
    assert difference.max() < 0.01 * lr, (name, float(difference.max()))
    if not re.search(r"/key\d?/bias$", name):
      beyond_rounding = difference > 1e-4 * np.abs(value) + 100 * FLOAT32_EPS * lr * STEPS
      assert beyond_rounding.mean() <= 0.01, (name, int(beyond_rounding.sum()))


def test_the_export_initialises_a_multi_task_run_and_converts(straight_run, tmp_path):
  workdir, result = straight_run
  pretrained = workdir / trainer.PRETRAINED_DIR
  multi = _load_config_module("twelve_in_one").get_config("tiny")
  multi.init.checkpoint = str(pretrained)
  task_config = tiny_config(task_specific_tokens=True)
  fresh = jax.tree.map(np.asarray, init_params(ViLBertForVLTasks(task_config),
                                               jax.random.key(1)))
  params, report = load_init_params(multi, task_config, fresh)
  assert "pretrained backbone" in report
  loaded, trained = _flat(params), _flat(result.state.params)
  for name, value in trained.items():
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)
  heads = [name for name in loaded if name not in trained]
  assert any(name.startswith("vil_prediction/") for name in heads)
  for name in heads:   # task heads and task tokens keep their fresh values
    np.testing.assert_array_equal(loaded[name], _flat(fresh)[name], err_msg=name)

  text = convert_export(str(pretrained), str(tmp_path / "export"), "torch")
  assert "pytorch_model.bin" in text
  state = checkpoint_io.read_state_dict(str(tmp_path / "export" / "pytorch_model.bin"))
  assert {name.split(".")[0] for name in state} == {"bert", "cls"}
  expected = export_official(jax.tree.map(np.asarray, jax.device_get(result.state.params)),
                             tiny_config(task_specific_tokens=False),
                             architecture="pretraining")
  assert set(state) == set(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(np.asarray(state[name]), value, err_msg=name)


def test_a_nan_loss_stops_the_run_and_saves_nothing(corpus_dir, tmp_path, monkeypatch):
  original, calls = trainer.model_batch, {"train": 0}

  def poisoned(batch):
    if "example_mask" not in batch:     # training batches (the first is the shapes' sample)
      calls["train"] += 1
      if calls["train"] == 3:           # step 1
        batch = dict(batch, image_feat=np.full_like(batch["image_feat"], np.nan))
    return original(batch)

  monkeypatch.setattr(trainer, "model_batch", poisoned)
  with pytest.raises(FloatingPointError, match="pretraining: loss is nan at step 1"):
    trainer.pretrain(pretrain_config(corpus_dir), str(tmp_path))
  assert not [path for path in (tmp_path / "checkpoints").iterdir() if path.name.isdigit()]
  assert not (tmp_path / trainer.PRETRAINED_DIR).exists()


def test_command_saves_on_sigterm_exits_143_and_resumes(corpus_dir, straight_run, tmp_path):
  """`twelve-in-one pretrain` on the test corpus: SIGTERM once training runs -> exit status
  143 after saving; the same command again finishes (exit 0) with the straight run's export."""
  _, expected = straight_run
  command = [sys.executable, "-m", "twelve_in_one.cli", "pretrain",
             f"--config={REPO}/configs/pretrain.py:tiny", f"--workdir={tmp_path}/run",
             "--config.data.generate_if_missing=False", f"--config.data.data_dir={corpus_dir}",
             f"--config.data.max_seq_length={SEQ_LEN}", f"--config.data.max_boxes={NUM_BOXES}",
             "--config.model.vocab_size=0", f"--config.batch_size={BATCH}",
             f"--config.schedule.num_epochs={STEPS // (NUM_TRAIN // BATCH)}",
             "--config.optimizer.lr=0.01", "--config.checkpoint.every_steps=100",
             "--config.compilation_cache_dir="]   # the test run's cache (conftest)
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=REPO)
  seen = ""
  while f"| 1/{STEPS}" not in seen and process.poll() is None:
    seen += process.stderr.read(1)      # tqdm's bar: the first step is done
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == 143, (seen + stderr)[-3000:]
  assert "rerun the same command to resume" in stdout
  steps = [int(path.name) for path in (tmp_path / "run" / "checkpoints").iterdir()
           if path.name.isdigit()]
  assert len(steps) == 1 and 1 <= steps[0] < STEPS
  finished = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert "pretrained parameters:" in finished.stdout
  params, _, _ = checkpoint_io.load_params(tmp_path / "run" / trainer.PRETRAINED_DIR)
  for name, value in _flat(expected.state.params).items():
    np.testing.assert_array_equal(_flat(params)[name], value, err_msg=name)


# ------------------------------------------------------------------ the optimizer


def _official_adamw(params, grads_by_step, multipliers, lrs, decays, b1, b2, eps, wd):
  """`pytorch_transformers.AdamW(correct_bias=True)` step by step, in float64, one param group
  per parameter at lr x the multiplier (the scheduler sets each group's lr)."""
  p = {name: value.astype(np.float64) for name, value in params.items()}
  m = {name: np.zeros_like(value) for name, value in p.items()}
  v = {name: np.zeros_like(value) for name, value in p.items()}
  for t, (grads, multiplier) in enumerate(zip(grads_by_step, multipliers), start=1):
    for name in p:
      g = grads[name].astype(np.float64)
      lr = lrs[name] * multiplier
      m[name] = b1 * m[name] + (1 - b1) * g
      v[name] = b2 * v[name] + (1 - b2) * g * g
      denom = np.sqrt(v[name]) + eps
      step_size = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
      p[name] = p[name] - step_size * m[name] / denom
      if decays[name]:
        p[name] = p[name] - lr * wd * p[name]
  return p


def test_optimizer_is_pytorch_transformers_adamw_with_bias_correction():
  rng = np.random.default_rng(3)
  shapes = {  # our paths -> official names with every kind of group
      ("bert", "embeddings", "word_embeddings", "embedding"): (7, 4),     # BERT, decays
      ("bert", "embeddings", "LayerNorm", "scale"): (4,),                 # BERT, no decay
      ("bert", "encoder", "layer_0", "attention", "self", "query", "kernel"): (4, 4),
      ("bert", "encoder", "layer_0", "attention", "self", "query", "bias"): (4,),
      ("bert", "v_embeddings", "image_embeddings", "kernel"): (6, 4),     # not BERT
      ("cls", "predictions", "transform", "LayerNorm", "bias"): (4,),
      ("cls", "bi_seq_relationship", "kernel"): (4, 2),
  }
  params = {key: rng.normal(scale=0.05, size=shape).astype(np.float32)
            for key, shape in shapes.items()}
  tree = traverse_util.unflatten_dict(params)
  config = pretrain_optimizer.PretrainOptimizerConfig(lr=1e-3, bert_lr_scale=0.1)
  optimizer = pretrain_optimizer.build(config, tree)
  state = optimizer.init(tree)
  grads_by_step = [{key: rng.normal(scale=scale, size=shape).astype(np.float32)
                    for key, shape in shapes.items()} for scale in (1e-6, 1.0, 1e-3)]
  multipliers = [0.5, 1.0, 0.25]
  ours = tree
  for grads, multiplier in zip(grads_by_step, multipliers):
    updates, state = optimizer.update(traverse_util.unflatten_dict(grads), state, ours,
                                      lr_multiplier=np.float32(multiplier))
    ours = jax.tree.map(lambda p, u: p + u, ours, updates)
  bert = {key: key[1] == "embeddings" or key[1] == "encoder" for key in shapes}
  lrs = {key: config.lr * (0.1 if bert[key] else 1.0) for key in shapes}
  decays = {key: key[-1] not in ("bias", "scale") for key in shapes}
  reference = _official_adamw(params, grads_by_step, multipliers, lrs, decays, config.b1,
                              config.b2, config.eps, config.weight_decay)
  flat = traverse_util.flatten_dict(jax.device_get(ours))
  for key, want in reference.items():
    # Per step a few float32 roundings (the update, its sum with the parameter, the decay)
    # of numbers no larger than the parameter and its move. The first step's gradients are
    # small enough (1e-6) that eps's place (added to the uncorrected sqrt(v)) changes the move
    # by 6%, and the bias correction changes it by 41%: far outside this bound.
    moved = np.abs(want - params[key])
    bound = 4 * 3 * FLOAT32_EPS * (np.abs(want) + moved)
    error = np.abs(np.asarray(flat[key], np.float64) - want)
    assert np.all(error <= bound), ("/".join(key), float(error.max()))
    assert np.all(moved > 0)
  # The groups took effect: a BERT weight moves about a tenth as far as another one.
  def mean_move(key):
    return float(np.mean(np.abs(reference[key] - params[key])))

  bert_kernel = ("bert", "encoder", "layer_0", "attention", "self", "query", "kernel")
  other_kernel = ("bert", "v_embeddings", "image_embeddings", "kernel")
  assert mean_move(bert_kernel) < 0.3 * mean_move(other_kernel)


def test_official_bert_lr_test_matches_no_name_of_the_unwrapped_model():
  """`train_concap.py` tests `key[12:] in bert_weight_name` before wrapping the model: no
  name matches, so its BERT weights train at the full rate (`bert_lr_scale=1.0`)."""
  names = list(official_param_table(tiny_config(task_specific_tokens=False), "pretraining"))
  bert_weight_names = {name[len("bert."):] for name in names
                       if pretrain_optimizer.BERT_TEXT_WEIGHT.match(name)}
  assert len(bert_weight_names) > 20
  assert not [name for name in names if name[12:] in bert_weight_names]
  # Wrapped (`module.bert....`, what the test was written for), each of them would.
  assert {f"module.{name}"[12:] for name in names} >= bert_weight_names


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("key, value, message", [
    ("objective", 3, "config.objective=3; expected one of [0, 1, 2]"),
    ("batch_size", 0, "config.batch_size=0; expected a positive whole number"),
    ("schedule.warmup_proportion", 1.5, "config.schedule.warmup_proportion=1.5"),
    ("optimizer.b2", 1.0, "config.optimizer.b2=1.0; expected a number in [0, 1)"),
    ("optimizer.lr", -1e-4, "config.optimizer.lr=-0.0001"),
    ("checkpoint.keep", 0, "config.checkpoint.keep=0"),
    ("data.max_seq_length", 7, "config.data.max_seq_length=7, but the corpus"),
    ("batch_size", 12, "config.batch_size=12 is not divisible by the 8 data-parallel"),
    ("batch_size", 64, "config.batch_size=64 is larger than the 48 training examples"),
    ("data.val_split", "test", "config.data.val_split='test': not prepared"),
    ("model.vocab_size", 20, "config.model.vocab_size: the model's vocabulary has 20"),
])
def test_bad_values_are_refused_naming_the_key(corpus_dir, tmp_path, key, value, message):
  with pytest.raises(ValueError) as error:
    trainer.pretrain(pretrain_config(corpus_dir, **{key: value}), str(tmp_path / "run"))
  assert message in str(error.value)
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run").exists()      # refused before anything was written


def test_command_line_errors_are_one_line(tmp_path):
  """Through `twelve-in-one pretrain`: a bad value and an unknown key, exit status 2, one line
  naming the key, and nothing generated for the refused run."""
  for override, named in (("--config.objective=5", "config.objective=5"),
                          ("--config.optimizer.nope=1", "nope")):
    run = subprocess.run(
        [sys.executable, "-m", "twelve_in_one.cli", "pretrain",
         f"--config={REPO}/configs/pretrain.py:tiny", f"--workdir={tmp_path}/run", override],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines()
              if line.startswith("twelve-in-one pretrain: error: ")]
    assert len(errors) == 1 and named in errors[0], run.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_config_variants_and_mesh_option():
  module = _load_config_module("pretrain")
  concap = module.get_config("concap,mesh=dp_tp")
  assert (concap.batch_size, concap.optimizer.lr, concap.optimizer.b2, concap.optimizer.eps,
          concap.schedule.num_epochs, concap.objective) == (512, 1e-4, 0.98, 1e-8, 10, 1)
  assert (concap.model.dtype, concap.model.scan_layers) == ("bfloat16", True)
  assert concap.mesh.axes.to_dict() == {"data": -1, "fsdp": 1, "tensor": 2}
  with pytest.raises(ValueError, match="needs --config.init.bert"):
    run_settings.validate_values(concap)
  smoke = module.get_config("smoke")
  assert smoke.data.generate_if_missing and smoke.model.name == "small"
  with pytest.raises(ValueError, match="unknown config variant 'large'"):
    module.get_config("large")
  with pytest.raises(ValueError, match="expected mesh=PRESET"):
    module.get_config("smoke,fsdp")
