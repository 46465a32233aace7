"""The encoder's layers as scans (`config.scan_layers`): the same function, the same checkpoints.

Scanned and unrolled float32 models differ only in how XLA orders float32 operations, so they
must agree to float32 rounding. That level is measured, not assumed: each test runs the
unrolled model in float64 too and takes the float32 model's own error against it (the parity
metric, max|ours - ref| / max(1, max|ref|), as `interop/parity.py` and the parity fixture's
tolerance derive it), and the scanned model may differ from the unrolled one by at most the
sum of two such errors. In float64 the two must agree within the parity tests' float64
tolerance.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import ground_truth
from twelve_in_one.interop.bert import load_bert
from twelve_in_one.interop.checkpoint_io import read_state_dict
from twelve_in_one.interop.official import (check_params, export_official, import_official,
                                            official_init)
from twelve_in_one.models import (BACKBONE_OUTPUTS, ViLBertForVLTasks, base_config,
                                  init_params, logical_param_specs, scan, tiny_config)
from twelve_in_one.models.vilbert import all_outputs
from twelve_in_one.tasks import get_task, model_inputs
from twelve_in_one.tasks.examples import random_batch
from twelve_in_one.train.objective import task_loss

FIXTURE = str(ground_truth.path("vilbert_tiny"))
FLOAT64_TOLERANCE = 1e-9      # the float64 parity tolerance (tests/test_parity.py)

LAYOUTS = {
    # The fixture's layout: two text layers first, then one block of two text, two visual.
    "tiny": tiny_config(),
    # The released 6/6 layout in miniature: one uniform stack of two blocks after C0.
    "released": tiny_config(num_hidden_layers=6, t_biattention_id=(3, 4, 5),
                            v_biattention_id=(0, 1, 2)),
    # Blocks of different shapes: one stack each, and a single leading text layer.
    "uneven": tiny_config(t_biattention_id=(1, 2, 4), v_biattention_id=(0, 1, 2)),
    # Both at once: a stack of two uniform blocks, then a block of another shape.
    "mixed": tiny_config(num_hidden_layers=6, t_biattention_id=(1, 2, 3, 5),
                         v_num_hidden_layers=4, v_biattention_id=(0, 1, 2, 3)),
}


def scaled_error(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max())) if ref.size else 0.0


def test_plan_of_the_released_config():
  plan = scan.scan_plan(base_config())
  described = [(e.name, len(e.steps), e.shape) if isinstance(e, scan.Stack) else e
               for e in plan]
  assert described == [("text_layers_0_to_5", 6, (1, 0, False)), ("c", 0),
                       ("blocks_1_to_5", 5, (1, 1, True)), ("v", 5), ("t", 11)]
  blocks = plan[2]
  assert [step.members() for step in blocks.steps[:2]] == [
      [("text_0", "layer_6"), ("visual_0", "v_layer_0"), ("coattention", "c_layer_1")],
      [("text_0", "layer_7"), ("visual_0", "v_layer_1"), ("coattention", "c_layer_2")]]
  uneven = [e.name for e in scan.stacks(LAYOUTS["uneven"])]
  assert uneven == ["text_layers_0_to_0", "blocks_1_to_1", "blocks_2_to_2"]
  mixed = [(e.name, len(e.steps)) for e in scan.stacks(LAYOUTS["mixed"])]
  assert mixed == [("text_layers_0_to_0", 1), ("blocks_1_to_2", 2), ("blocks_3_to_3", 1)]


def test_stacked_parameters_have_a_leading_layers_axis_and_the_same_count():
  for cfg in (tiny_config(), base_config()):
    scanned = ViLBertForVLTasks(cfg.replace(scan_layers=True))
    shapes = jax.eval_shape(lambda m=scanned: init_params(m, jax.random.key(0)))
    plain = jax.eval_shape(lambda: init_params(ViLBertForVLTasks(cfg), jax.random.key(0)))
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    assert count(shapes) == count(plain)
    # The layout conversion gives exactly the scanned model's tree.
    converted = jax.eval_shape(lambda p: scan.to_scanned(p, cfg), plain)
    assert jax.tree.map(lambda x: x.shape, converted) == jax.tree.map(lambda x: x.shape, shapes)
  specs = traverse_util.flatten_dict(logical_param_specs(scanned), sep="/")
  flat = traverse_util.flatten_dict(shapes, sep="/")
  stacked = [name for name in specs if name.startswith(("bert/encoder/text_layers_",
                                                        "bert/encoder/blocks_"))]
  assert stacked and all(specs[name][0] == "layers" for name in stacked)
  for name, spec in specs.items():
    assert len(spec) == len(flat[name].shape) and all(isinstance(a, str) for a in spec), name
  from configs.mesh import preset
  _, rules = preset("fsdp_tp")
  query = "bert/encoder/blocks_1_to_5/text_0/attention/self/query/kernel"
  assert nn.logical_to_mesh_axes(specs[query], rules) == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor")


def _batch(cfg, task_name="vqa"):
  task = get_task(task_name)
  batch = random_batch(task, 4, vocab_size=cfg.vocab_size, feature_size=cfg.v_feature_size,
                       num_vqa_answers=cfg.num_vqa_answers, num_gqa_answers=cfg.num_gqa_answers)
  batch["input_mask"][1, -3:] = 0
  batch["image_mask"][2, -5:] = 0
  return task, batch


def _run(cfg, params, dtype):
  """Every output of the model and the VQA loss's gradients (dropout off)."""
  cfg = cfg.replace(dtype=dtype)
  model = ViLBertForVLTasks(cfg)
  task, batch = _batch(cfg)
  cast = lambda tree: jax.tree.map(
      lambda x: np.asarray(x, dtype) if np.issubdtype(np.asarray(x).dtype, np.floating)
      else x, tree)
  params, batch = cast(params), cast(batch)
  inputs = dict(model_inputs(task, batch), task_ids=task.task_id)
  outputs = all_outputs(cfg) + BACKBONE_OUTPUTS
  forward = jax.jit(lambda p: model.apply({"params": p}, **inputs, outputs=outputs))(params)
  loss = lambda p: task_loss(model.apply, p, task, batch, deterministic=True,
                             rng=jax.random.key(1))[0]
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  grads = scan.to_unrolled(grads, cfg) if cfg.scan_layers else grads
  flat = {f"out/{k}": v for k, v in forward.items()}
  flat.update({f"grad/{k}": v for k, v in traverse_util.flatten_dict(grads, sep="/").items()})
  flat["loss"] = value
  return jax.tree.map(np.asarray, flat)


# The fixture's layout is compared against the official outputs with scan on as well
# (tests/test_parity.py); here what it lacks: a multi-step stack beside a block of another shape.
@pytest.fixture(scope="module", params=["mixed"])
def runs(request):
  cfg = LAYOUTS[request.param]
  params = init_params(ViLBertForVLTasks(cfg), jax.random.key(0))
  stacked = scan.to_scanned(params, cfg)
  scanned_cfg = cfg.replace(scan_layers=True)
  out = {"unrolled32": _run(cfg, params, "float32"),
         "scanned32": _run(scanned_cfg, stacked, "float32")}
  with jax.enable_x64(True):
    out["unrolled64"] = _run(cfg, params, "float64")
    out["scanned64"] = _run(scanned_cfg, stacked, "float64")
  return out


def test_scanned_equals_unrolled_forward_and_gradients(runs):
  truth, unrolled, scanned = runs["unrolled64"], runs["unrolled32"], runs["scanned32"]
  assert unrolled.keys() == scanned.keys() == truth.keys()
  assert sum(key.startswith("grad/") for key in truth) > 100
  # float32 rounding of this computation: the unrolled float32 model against float64.
  rounding = max(scaled_error(unrolled[k], truth[k]) for k in truth)
  assert 0 < rounding < 1e-4
  for key in truth:
    assert scaled_error(scanned[key], unrolled[key]) <= 2 * rounding, (key, rounding)
    assert scaled_error(runs["scanned64"][key], truth[key]) <= FLOAT64_TOLERANCE, key


def test_remat_inside_the_scan_keeps_loss_and_gradients():
  cfg = tiny_config(scan_layers=True)
  task, batch = _batch(cfg)
  params = init_params(ViLBertForVLTasks(cfg), jax.random.key(0))

  def loss_and_grads(remat):
    model = ViLBertForVLTasks(cfg.replace(remat=remat))
    loss = lambda p: task_loss(model.apply, p, task, batch, deterministic=False,
                               rng=jax.random.key(1))[0]
    return jax.jit(jax.value_and_grad(loss))(params)

  loss, grads = loss_and_grads(False)
  # Every layer recomputed (the per-stream subsets take the same code path per layer kind).
  remat_loss, remat_grads = loss_and_grads(True)
  assert float(remat_loss) == float(loss)        # the same dropout masks and forward
  # Recomputation reorders float32 sums: rounding of the largest gradient, as
  # tests/test_model.py::assert_grads_match bounds it.
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
  for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads)):
    assert float(jnp.abs(g - h).max()) <= 1e-6 * scale


def test_remat_inside_the_scan_shrinks_the_backward_passs_memory():
  """`nn.remat` in a scan's body is not undone by XLA:CPU's scheduler (the loop keeps each
  step's recomputation in its own backward iteration): it saves a like share of the
  temporaries as `models/remat.py` saves for the unrolled layers (the `base` figures:
  BENCHMARKS.md, "Encoder layers as a scan")."""
  cfg = LAYOUTS["released"]
  task = get_task("vqa")
  batch = random_batch(task, 64, vocab_size=cfg.vocab_size, seq_len=12, num_regions=36,
                       feature_size=cfg.v_feature_size)
  params = init_params(ViLBertForVLTasks(cfg), jax.random.key(0))

  def temporaries(scanned, remat):
    model = ViLBertForVLTasks(cfg.replace(scan_layers=scanned, remat=remat))
    tree = scan.to_scanned(params, cfg) if scanned else params
    loss = lambda p: task_loss(model.apply, p, task, batch, deterministic=False,
                               rng=jax.random.key(1))[0]
    return jax.jit(jax.grad(loss)).lower(tree).compile().memory_analysis().temp_size_in_bytes
  scanned_saving = temporaries(True, False) - temporaries(True, True)
  unrolled_saving = temporaries(False, False) - temporaries(False, True)
  assert unrolled_saving > 0 and scanned_saving > 0.5 * unrolled_saving, (scanned_saving,
                                                                          unrolled_saving)


def test_pooled_only_cut_still_applies_when_scanned():
  cfg = tiny_config(scan_layers=True)
  model = ViLBertForVLTasks(cfg)
  params = init_params(model, jax.random.key(0))
  task, batch = _batch(cfg)
  inputs = dict(model_inputs(task, batch), task_ids=task.task_id)
  pooled = ("vil_prediction", "pooled_output_t", "pooled_output_v")
  flops = lambda outputs: jax.jit(lambda p: model.apply({"params": p}, **inputs,
                                                        outputs=outputs)).lower(
      params).compile().cost_analysis()["flops"]
  assert flops(pooled) < flops(pooled + ("sequence_output_v",))


def test_coattention_maps_are_the_same_in_both_layouts():
  cfg = LAYOUTS["released"]
  params = init_params(ViLBertForVLTasks(cfg), jax.random.key(0))
  task, batch = _batch(cfg)
  inputs = dict(model_inputs(task, batch), task_ids=task.task_id)
  maps = {}
  for scanned in (False, True):
    model = ViLBertForVLTasks(cfg.replace(scan_layers=scanned))
    tree = scan.to_scanned(params, cfg) if scanned else params
    _, state = model.apply({"params": tree}, **inputs, mutable=["intermediates"])
    maps[scanned] = scan.coattention_maps(state["intermediates"], cfg)
  assert list(maps[True]) == [f"c_layer_{k}" for k in range(3)]
  for name, plain in traverse_util.flatten_dict(maps[False], sep="/").items():
    np.testing.assert_allclose(traverse_util.flatten_dict(maps[True], sep="/")[name], plain,
                               rtol=1e-5, atol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------ interop
def test_import_export_round_trips_bitwise_with_scan_on():
  from twelve_in_one.interop.checkpoint_io import read_official_config
  config = read_official_config(os.path.join(FIXTURE, "tiny_config.json"), scan_layers=True)
  state = read_state_dict(os.path.join(FIXTURE, "tiny_state_dict.npz"))
  params, report = import_official(state, config)
  plain, plain_report = import_official(state, config.replace(scan_layers=False))
  assert report.loaded == plain_report.loaded and not report.missing
  check_params(params, config)
  assert scan.is_scanned(params, config)
  expected = jax.eval_shape(lambda: init_params(ViLBertForVLTasks(config), jax.random.key(0)))
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, expected)
  exported = export_official(params, config)
  assert list(exported) == list(export_official(plain, config.replace(scan_layers=False)))
  # Every loaded parameter comes back bitwise (q_dense1/2 and linguisic_logit, which never
  # enter the forward, are exported freshly initialised, as without scan).
  assert len(report.loaded) > 100
  for name in report.loaded + report.tied:
    value = np.asarray(state[name])
    assert exported[name].dtype == value.dtype and np.array_equal(exported[name], value), name
  again, _ = import_official(exported, config)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    assert a.dtype == b.dtype and np.array_equal(a, b)
  with pytest.raises(ValueError, match="pass their config"):
    export_official(params)
  with pytest.raises(ValueError, match="not a parameter of this config"):
    check_params(plain, config)


def test_official_init_and_bert_load_give_the_same_values_in_both_layouts():
  cfg = LAYOUTS["released"]
  scanned_cfg = cfg.replace(scan_layers=True)
  fresh, stacked = official_init(cfg, 7), official_init(scanned_cfg, 7)
  for a, b in zip(jax.tree.leaves(scan.to_scanned(fresh, cfg)), jax.tree.leaves(stacked)):
    assert np.array_equal(a, b)
  # BERT weights into the text stream: the first text layers and the embeddings, by name.
  source = export_official(official_init(cfg, 3), cfg, include_unused=False)
  bert = {name: value for name, value in source.items()
          if name.startswith(("bert.embeddings.", "bert.encoder.layer."))
          and "task_embeddings" not in name}
  plain, plain_report = load_bert(bert, cfg, params=fresh)
  loaded, report = load_bert(bert, scanned_cfg, params=stacked)
  assert report.loaded == plain_report.loaded
  for a, b in zip(jax.tree.leaves(scan.to_scanned(plain, cfg)), jax.tree.leaves(loaded)):
    assert np.array_equal(a, b)


def test_stacked_names_meet_the_same_optimizer_name_rules():
  """The learning-rate groups and the weight-decay mask are decided on substrings of the
  official name (`train/optimizer.py`); a stacked leaf's name (`official_name` of its path)
  has the same of those substrings as every layer it stacks."""
  from twelve_in_one.interop.names import official_name
  rules = ("vil_", "bias", "LayerNorm.bias", "LayerNorm.weight")
  cfg = base_config()
  shapes = jax.eval_shape(lambda: init_params(ViLBertForVLTasks(cfg.replace(scan_layers=True)),
                                              jax.random.key(0)))
  members = {(stack.name, child): [name for step in stack.steps
                                   for c, name in step.members() if c == child]
             for stack in scan.stacks(cfg) for child, _ in stack.steps[0].members()}
  checked = 0
  for path in traverse_util.flatten_dict(shapes):
    if path[:2] != ("bert", "encoder") or (path[2], path[3]) not in members:
      continue
    stacked = official_name(path)[0]
    for layer in members[(path[2], path[3])]:
      unrolled = official_name(("bert", "encoder", layer) + path[4:])[0]
      assert {r for r in rules if r in stacked} == {r for r in rules if r in unrolled}, (
          stacked, unrolled)
      checked += 1
  assert checked == 6 * 16 + 5 * (16 + 16 + 32)


def test_scanned_model_runs_sharded_over_fsdp_and_tensor_axes():
  """Stacked parameters sharded by the mesh rules (the `layers` axis whole) on 8 devices give
  the single-device loss and gradients, within the parity tests' float32 tolerance."""
  from configs.mesh import preset
  from twelve_in_one.train import sharding
  sizes, rules = preset("fsdp_tp")
  mesh = sharding.make_mesh(sizes)
  cfg = LAYOUTS["released"].replace(scan_layers=True)
  model = ViLBertForVLTasks(cfg)
  params = init_params(model, jax.random.key(0))
  shardings = sharding.tree_shardings(jax.eval_shape(lambda: params),
                                      logical_param_specs(model), mesh, rules)
  query = shardings["bert"]["encoder"]["blocks_1_to_2"]["text_0"]["attention"]["self"]["query"]
  assert query["kernel"].spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  task, batch = _batch(cfg)
  loss = lambda p: task_loss(model.apply, p, task, batch, deterministic=True,
                             rng=jax.random.key(1))[0]
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    sharded_value, sharded_grads = jax.jit(jax.value_and_grad(loss))(
        jax.device_put(params, shardings))
  assert scaled_error(sharded_value, value) <= 1e-5
  for got, want in zip(jax.tree.leaves(sharded_grads), jax.tree.leaves(grads)):
    assert scaled_error(got, want) <= 1e-5
