"""The task registry: plain data without jax, what it derives, and adding a task to it."""

import dataclasses
import subprocess
import sys

import pytest

from twelve_in_one.tasks import registry
from twelve_in_one.tasks.registry import TASKS, TWELVE_TASKS, Task, get_task

JAX_MODULES = ("import sys; print(sorted(m for m in sys.modules "
               "if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax')))")


def _modules_after(code: str) -> str:
  done = subprocess.run([sys.executable, "-c", f"{code}; {JAX_MODULES}"], capture_output=True,
                        text=True, check=True)
  return done.stdout.strip().splitlines()[-1]


def test_importing_the_registry_loads_no_jax():
  assert _modules_after("import twelve_in_one.tasks.registry") == "[]"
  # The package's names too: the jax parts (losses, model inputs) load on first use only.
  assert _modules_after("from twelve_in_one.tasks import TASKS, get_task, Task") == "[]"
  assert _modules_after("from twelve_in_one.tasks import model_inputs") != "[]"


def test_the_config_and_the_generator_load_no_jax():
  config = ("import importlib.util as u; s = u.spec_from_file_location('c', "
            "'configs/twelve_in_one.py'); m = u.module_from_spec(s); s.loader.exec_module(m); "
            "[m.get_config(v) for v in ('twelve_in_one', 'smoke', 'tiny', 'single:gqa')]; "
            "import twelve_in_one.data.generate, twelve_in_one.data.examples")
  assert _modules_after(config) == "[]"


def test_twelve_built_in_tasks_and_their_derived_properties():
  assert TWELVE_TASKS == tuple(TASKS)[:12] and len(set(TWELVE_TASKS)) == 12
  assert get_task("VQA") is get_task("task1") is TASKS["vqa"]
  assert get_task("refcoco+").name == "refcoco_plus"
  # Candidates: Visual7W's four choices; GuessWhat's every ground-truth slot but the pad row.
  assert get_task("visual7w").num_candidates == 4
  guesswhat = get_task("guesswhat_pointing")
  assert guesswhat.num_candidates == 306 - 101 - 1
  assert dataclasses.replace(guesswhat, max_region_num=18, num_detected_regions=11
                             ).num_candidates == 6
  assert all(task.num_candidates == 0 for task in TASKS.values()
             if task.head_type != "V-logit-mc")
  assert {t.name for t in TASKS.values() if t.head_spec.answer_head} == {"vqa", "genome_qa",
                                                                          "gqa"}
  assert {t.name: t.server_format for t in TASKS.values() if t.server_format} == {
      "vqa": "vqa", "gqa": "gqa"}
  assert all(t.paper is not None and t.paper.our_split in t.eval_splits
             for t in TASKS.values())


def test_head_specs_and_their_loss_functions_agree():
  from twelve_in_one.tasks import head_types
  assert set(head_types.HEAD_TYPES) == set(registry.HEAD_SPECS)
  for name, head in head_types.HEAD_TYPES.items():
    assert head.output == registry.HEAD_SPECS[name].output
    assert head.metric == registry.HEAD_SPECS[name].metric


def _extra(**changes) -> Task:
  fields = dict(name="extra", task_id=19, official_name="Extra", head_type="VL-tri-classifier",
                dataset="extra", max_seq_length=12, max_region_num=101, batch_size=8,
                lr=2e-5, num_epochs=1, train_split="train", val_split="val",
                eval_splits=("val",), features="extra/features.lmdb", reader="extra",
                dataroot="extra")
  return Task(**{**fields, **changes})


def test_a_registered_task_is_seen_by_every_derived_table_and_then_gone():
  from twelve_in_one.data.generate import layout
  from twelve_in_one.evaluate import paper

  before = dict(layout.DATAROOTS)
  with registry.registered_task(_extra()) as task:
    assert get_task("extra") is task and get_task("TASK19") is task
    assert layout.DATAROOTS["extra"] == "extra" and "extra" in layout.TRAIN_SPLITS
    assert "extra" not in paper.PAPER   # the paper does not report it
    assert TWELVE_TASKS == tuple(TASKS)[:12] and list(TASKS)[-1] == "extra"
  assert "extra" not in TASKS and dict(layout.DATAROOTS) == before
  with pytest.raises(ValueError, match="unknown task 'extra'"):
    get_task("extra")
  with pytest.raises(ValueError, match="unknown task 'TASK19'"):
    get_task("TASK19")


@pytest.mark.parametrize("changes, message", [
    (dict(name="vqa"), "'vqa' already names task 'vqa'"),
    (dict(official_name="GQA"), "'gqa' already names task 'gqa'"),
    (dict(task_id=4), "task id 4 is already task 'visual7w'"),
])
def test_a_clashing_task_is_refused(changes, message):
  with pytest.raises(ValueError, match=message):
    registry.register_task(_extra(**changes))
  assert len(TASKS) == 12


@pytest.mark.parametrize("changes, message", [
    (dict(head_type="V-logit-multi"), "head_type 'V-logit-multi'; expected one of"),
    (dict(num_choices=4), "num_choices=4 is only for V-logit-mc tasks"),
    (dict(process="pairs"), "process 'pairs'; expected one of"),
    (dict(clean_source="coco"), "clean_source and clean_splits go together"),
    (dict(name="a+b"), "without '\\+' or ','"),
    (dict(class_names=("yes", "no")), "2 class_names for head type 'VL-tri-classifier', which "
                                      "has 3 classes"),
])
def test_a_malformed_task_is_refused_naming_the_field(changes, message):
  with pytest.raises(ValueError, match=message):
    _extra(**changes)


def test_the_built_in_tasks_cannot_be_removed():
  with pytest.raises(ValueError, match="built-in twelve"):
    registry.unregister_task("vqa")


def test_a_split_may_read_its_own_feature_file():
  vqa = get_task("vqa")
  assert vqa.features_for("test").endswith("COCO_test_resnext152_faster_rcnn_genome.lmdb")
  assert vqa.features_for("trainval") == vqa.features_for("minval") == vqa.features
  pointed = vqa.with_split_features(["test=/disk/test2015.lmdb", "minval=val.lmdb"])
  assert pointed.features_for("test") == "/disk/test2015.lmdb"
  assert pointed.features_for("minval") == "val.lmdb"
  assert pointed.features_for("trainval") == vqa.features
  with pytest.raises(ValueError, match="split features 'test': expected SPLIT=LMDB"):
    vqa.with_split_features(["test"])
  with pytest.raises(ValueError, match="task 'vqa': split_features entry"):
    dataclasses.replace(vqa, split_features=(("test", ""),))
