"""The ViLBERT model: parameter count, shapes, masking, dropout, gradients and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from twelve_in_one.models import (ALL_OUTPUTS, TASK_OUTPUTS, ViLBertForVLTasks, base_config,
                                  init_params, logical_param_specs, tiny_config)
from twelve_in_one.models.encoder import encoder_schedule, pooled_only_layers
from twelve_in_one.tasks import TASKS, get_task
from twelve_in_one.tasks.examples import random_batch
from twelve_in_one.tasks import model_inputs
from twelve_in_one.train.objective import task_loss, task_outputs

# The official `bert_base_6layer_6conect` VILBertForVLTasks with task tokens and the
# pretraining heads, the tied MLM decoder counted once.
OFFICIAL_BASE_PARAMS = 268_028_859
# What we leave out because the official forward never uses it:
# q_dense1 (1024->1024) and q_dense2 (1024->768) in each of the 6 co-attention blocks ...
Q_DENSE = 6 * ((1024 * 1024 + 1024) + (1024 * 768 + 768))
# ... and `linguisic_logit`, Linear(768 -> 1).
LINGUISIC_LOGIT = 768 + 1


@pytest.fixture(scope="module")
def tiny():
  model = ViLBertForVLTasks(tiny_config())
  return model, init_params(model, jax.random.key(0))


def test_base_parameter_count_matches_official_minus_unused():
  shapes = jax.eval_shape(lambda: init_params(ViLBertForVLTasks(base_config()),
                                              jax.random.key(0)))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert Q_DENSE == 11_020_800
  assert count == OFFICIAL_BASE_PARAMS - Q_DENSE - LINGUISIC_LOGIT


def test_encoder_schedule_matches_official_order():
  order = encoder_schedule(base_config())
  text = " ".join(f"{k.upper()}{i}" for k, i in order)
  # After the last block the reference runs the remaining visual layers, then the remaining
  # text layers (the streams are independent there, so the spec's diagram order is the same).
  assert text == ("T0 T1 T2 T3 T4 T5 C0 T6 V0 C1 T7 V1 C2 T8 V2 C3 T9 V3 C4 T10 V4 C5 "
                  "V5 T11")
  assert " ".join(f"{k}{i}" for k, i in encoder_schedule(tiny_config())) == \
      "t0 t1 c0 t2 t3 v0 v1 c1 v2 t4"


def test_every_parameter_has_logical_axes():
  specs = traverse_util.flatten_dict(logical_param_specs(ViLBertForVLTasks(tiny_config())),
                                     sep="/")
  shapes = traverse_util.flatten_dict(
      jax.eval_shape(lambda: init_params(ViLBertForVLTasks(tiny_config()), jax.random.key(0))),
      sep="/")
  assert specs.keys() == shapes.keys()
  for name, spec in specs.items():
    assert spec is not None and len(spec) == len(shapes[name].shape), name
    assert all(isinstance(axis, str) for axis in spec), (name, spec)


OFFICIAL_SHAPES = {  # task -> (output, shape as a function of the batch B and regions R)
    "VL-classifier": lambda b, r: (b, 3129),
    "VL-classifier-GQA": lambda b, r: (b, 1533),
    "VL-logit": lambda b, r: (4 * b, 1),
    "V-logit": lambda b, r: (b, r, 1),
    "V-logit-mc": lambda b, r: (b, r, 1),
    "VL-binary-classifier": lambda b, r: (b, 2),
    "VL-tri-classifier": lambda b, r: (b, 3),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_forward_gives_official_shapes(tiny, name):
  model, params = tiny
  task = get_task(name)
  batch_size = 2
  batch = random_batch(task, batch_size, vocab_size=1000)
  out = jax.jit(lambda p, b: task_outputs(model.apply, p, task, b))(params, batch)
  assert set(out) == {task.output}   # only the task's own head is computed
  expected = OFFICIAL_SHAPES[task.head_type](batch_size, task.max_region_num)
  assert out[task.output].shape == expected
  assert np.all(np.isfinite(out[task.output]))


def _inputs(batch_size=2, seq_len=6, num_regions=5, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(200, 1000, (batch_size, seq_len)).astype(np.int32)
  ids[:, 0] = 101
  return dict(input_ids=ids, image_feat=rng.random((batch_size, num_regions, 2048), np.float32),
              image_loc=rng.random((batch_size, num_regions, 5), np.float32),
              segment_ids=np.zeros_like(ids), input_mask=np.ones_like(ids),
              image_mask=np.ones((batch_size, num_regions), np.int32),
              task_ids=np.array([[1], [9]]))


def test_padding_does_not_change_outputs_at_real_positions(tiny):
  model, params = tiny
  base = _inputs()
  padded = dict(base)
  pad_t, pad_r = 3, 4
  padded["input_ids"] = np.pad(base["input_ids"], ((0, 0), (0, pad_t)))
  padded["segment_ids"] = np.pad(base["segment_ids"], ((0, 0), (0, pad_t)))
  padded["input_mask"] = np.pad(base["input_mask"], ((0, 0), (0, pad_t)))
  rng = np.random.default_rng(1)   # padding content must not matter either
  padded["image_feat"] = np.concatenate(
      [base["image_feat"], rng.random((2, pad_r, 2048), np.float32)], 1)
  padded["image_loc"] = np.concatenate([base["image_loc"], rng.random((2, pad_r, 5),
                                                                      np.float32)], 1)
  padded["image_mask"] = np.pad(base["image_mask"], ((0, 0), (0, pad_r)))
  outputs = ALL_OUTPUTS
  apply = jax.jit(lambda p, x: model.apply({"params": p}, **x, outputs=outputs))
  a, b = apply(params, base), apply(params, padded)
  text_len = base["input_ids"].shape[1] + 1   # + task token
  regions = base["image_feat"].shape[1]
  for name in outputs:
    x, y = np.asarray(a[name]), np.asarray(b[name])
    if name in ("sequence_output_t", "embedding_output", "text_before_coattention",
                "linguisic_prediction"):
      y = y[:, :text_len]
    elif name in ("sequence_output_v", "v_embedding_output", "visual_before_coattention",
                  "vision_logit", "vision_prediction"):
      y = y[:, :regions]
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=name)
  # Padded regions get the reference's -10000 on vision_logit.
  assert np.all(np.asarray(b["vision_logit"])[:, regions:] < -9000)


def test_dropout_off_is_bit_identical_and_on_depends_on_rng(tiny):
  model, params = tiny
  inputs = _inputs()
  @jax.jit
  def on(seed):
    return model.apply({"params": params}, **inputs, outputs=("vil_prediction",),
                       deterministic=False, rngs={"dropout": jax.random.key(seed)})["vil_prediction"]

  off = jax.jit(lambda: model.apply({"params": params}, **inputs,
                                    outputs=("vil_prediction",))["vil_prediction"])
  run = lambda: np.asarray(off())
  np.testing.assert_array_equal(run(), run())
  np.testing.assert_array_equal(on(3), on(3))
  assert not np.allclose(on(3), on(4))
  assert not np.allclose(on(3), run())


HEAD_PARAMS = {"vil_prediction", "vil_prediction_gqa", "vil_binary_prediction", "vil_logit",
               "vil_tri_prediction", "vision_logit", "cls"}


@pytest.mark.parametrize("name", ["vqa", "gqa", "retrieval_coco", "refcoco", "visual7w",
                                  "nlvr2", "snli_ve"])
def test_loss_reaches_its_head_and_leaves_other_heads_at_exactly_zero(tiny, name):
  model, params = tiny
  task = get_task(name)
  batch = random_batch(task, 2, vocab_size=1000, seq_len=6,
                       num_regions=task.num_detected_regions + 6
                       if task.head_type == "V-logit-mc" else 7)
  grads = jax.jit(jax.grad(lambda p: task_loss(model.apply, p, task, batch)[0]))(params)
  own_head = task.output
  for head in HEAD_PARAMS:
    norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[head]))
    if head == own_head:
      assert norm > 0, head
    else:
      assert norm == 0.0, f"{task.name}: gradient reached {head}"
  body = grads["bert"]
  assert float(jnp.abs(body["embeddings"]["task_embeddings"]["embedding"][task.task_id]).sum()) > 0
  others = np.delete(np.arange(20), task.task_id)
  assert float(jnp.abs(body["embeddings"]["task_embeddings"]["embedding"][others]).sum()) == 0


def test_bad_inputs_name_the_array_and_shape(tiny):
  model, params = tiny
  good = _inputs()
  with pytest.raises(ValueError, match=r"image_feat: expected shape \[2, \?, 2048\].*got \[2, 5, 1024\]"):
    model.apply({"params": params}, **{**good, "image_feat": good["image_feat"][..., :1024]})
  long_ids = np.ones((2, 600), np.int32)
  with pytest.raises(ValueError, match=r"input_ids: 600 text tokens, longer than the position "
                                       r"table \(max_position_embeddings=512\)"):
    model.apply({"params": params}, **{**good, "input_ids": long_ids, "segment_ids": None,
                                       "input_mask": None})
  with pytest.raises(ValueError, match=r"image_loc: expected shape \[2, 5, 5\]"):
    model.apply({"params": params}, **{**good, "image_loc": good["image_loc"][..., :4]})
  with pytest.raises(ValueError, match="task_ids: required"):
    model.apply({"params": params}, **{**good, "task_ids": None})
  with pytest.raises(ValueError, match=r"task_ids: values must be in \[0, 20\)"):
    model.apply({"params": params}, **{**good, "task_ids": 25})
  with pytest.raises(ValueError, match="vil_binary_prediction: needs an even batch"):
    odd = {k: v[:1] for k, v in good.items()}
    model.apply({"params": params}, **odd, outputs=("vil_binary_prediction",))
  with pytest.raises(ValueError, match=r"unknown output\(s\) \['nope'\]"):
    model.apply({"params": params}, **good, outputs=("nope",))
  with pytest.raises(ValueError, match="unknown task 'vqa3'"):
    get_task("vqa3")


def test_bfloat16_compute_keeps_float32_params_and_close_outputs(tiny):
  model, params = tiny
  bf16 = ViLBertForVLTasks(tiny_config(dtype="bfloat16"))
  inputs = _inputs()
  ref = jax.jit(lambda p: model.apply({"params": p}, **inputs, outputs=("vil_logit",)))(params)
  out = jax.jit(lambda p: bf16.apply({"params": p}, **inputs, outputs=("vil_logit",)))(params)
  ref, out = ref["vil_logit"], out["vil_logit"]
  assert out.dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.1, rtol=0.1)


def test_fused_attention_kernel_matches_einsum(tiny):
  model, params = tiny
  fused = ViLBertForVLTasks(tiny_config(attention_impl="dot_product_attention"))
  inputs = _inputs()
  inputs["input_mask"][1, 4:] = 0
  inputs["image_mask"][0, 3:] = 0
  a = jax.jit(lambda p: model.apply({"params": p}, **inputs, outputs=TASK_OUTPUTS))(params)
  b = jax.jit(lambda p: fused.apply({"params": p}, **inputs, outputs=TASK_OUTPUTS))(params)
  for name in TASK_OUTPUTS:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-4, err_msg=name)


def test_remat_choices_are_parsed_and_bad_ones_named():
  assert tiny_config(remat=True).remat == "text,visual,coattention"
  assert tiny_config(remat="ALL").remat_kinds == {"t", "v", "c"}
  for off in (False, "", "none", "False"):
    assert tiny_config(remat=off).remat_kinds == frozenset()
  # Order-insensitive, so two spellings of one choice compare (and cache) equal.
  assert tiny_config(remat="coattention, text").remat == "text,coattention"
  assert tiny_config(remat="visual").remat_kinds == {"v"}
  with pytest.raises(ValueError, match=r"remat='text,ffn' names unknown layer kind\(s\) \['ffn'\]"):
    tiny_config(remat="text,ffn")


def assert_grads_match(grads, remat_grads) -> None:
  """Remat's gradients equal the plain ones to float32 rounding of the largest gradient."""
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
  remat_flat = traverse_util.flatten_dict(remat_grads, sep="/")
  for path, g in traverse_util.flatten_dict(grads, sep="/").items():
    h = remat_flat[path]
    # Recomputation reorders float32 sums: differences stay at rounding level of the largest
    # gradient (key biases, whose true gradient is zero, are pure rounding noise).
    assert float(jnp.abs(g - h).max()) <= 1e-6 * scale, path


def test_remat_keeps_loss_and_gradients_and_shrinks_the_backward_passs_memory():
  """`remat` recomputes layers in the backward pass: the same parameter tree, loss and
  gradients. XLA:CPU's scheduler ran `jax.checkpoint`'s recomputations early (no memory
  saved); ours are tied to the cotangent, so the compiled gradient needs far fewer
  temporaries. Recomputing the co-attention blocks alone (between plain text and visual
  layers) saves part of that."""
  task = get_task("vqa")
  batch = random_batch(task, 64, vocab_size=1000, seq_len=12, num_regions=36,
                       feature_size=tiny_config().v_feature_size)

  def temporaries(remat: bool | str) -> tuple[int, float, dict]:
    model = ViLBertForVLTasks(tiny_config(remat=remat))
    params = init_params(model, jax.random.key(0))
    assert jax.tree.structure(params) == structure
    loss = lambda p: task_loss(model.apply, p, task, batch, deterministic=False,
                               rng=jax.random.key(1))[0]
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
    value, grads = compiled(params)
    return compiled.memory_analysis().temp_size_in_bytes, float(value), grads

  structure = jax.tree.structure(jax.eval_shape(
      lambda: init_params(ViLBertForVLTasks(tiny_config()), jax.random.key(0))))
  plain_bytes, plain_loss, plain_grads = temporaries(False)
  remat_bytes, remat_loss, remat_grads = temporaries(True)
  block_bytes, block_loss, block_grads = temporaries("coattention")
  assert remat_loss == plain_loss == block_loss    # dropout masks and forward unchanged
  assert_grads_match(plain_grads, remat_grads)
  assert_grads_match(plain_grads, block_grads)
  assert remat_bytes < 0.5 * plain_bytes, (remat_bytes, plain_bytes)
  assert remat_bytes < block_bytes < 0.9 * plain_bytes, (remat_bytes, block_bytes, plain_bytes)


def test_pooled_only_tasks_compute_the_last_layers_at_position_zero(tiny):
  """Without sequence outputs the last text/visual layers run at position 0: same values."""
  model, params = tiny
  cfg = model.config
  # tiny's schedule ends "... c1 v2 t4": both last layers follow the last block.
  assert pooled_only_layers(cfg, False, False) == {("v", 2), ("t", 4)}
  assert pooled_only_layers(cfg, True, False) == {("v", 2)}
  assert pooled_only_layers(cfg, True, True) == set()
  # A visual stream whose last layer feeds the last block cannot be cut.
  assert pooled_only_layers(tiny_config(v_biattention_id=(0, 3)), False, False) == {("t", 4)}
  task = get_task("vqa")
  batch = random_batch(task, 4, vocab_size=cfg.vocab_size, feature_size=cfg.v_feature_size,
                       num_vqa_answers=cfg.num_vqa_answers, num_gqa_answers=cfg.num_gqa_answers)
  batch["input_mask"][1, -3:] = 0
  batch["image_mask"][2, -5:] = 0
  inputs = dict(model_inputs(task, batch), task_ids=task.task_id)
  pooled = ("vil_prediction", "pooled_output_t", "pooled_output_v")
  full = model.apply({"params": params}, **inputs,
                     outputs=pooled + ("sequence_output_t", "sequence_output_v"))
  cut = model.apply({"params": params}, **inputs, outputs=pooled)
  grounding = model.apply({"params": params}, **inputs, outputs=("vision_logit",))
  reference = model.apply({"params": params}, **inputs,
                          outputs=("vision_logit", "sequence_output_t"))
  for name in pooled:
    np.testing.assert_allclose(cut[name], full[name], rtol=1e-6, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(grounding["vision_logit"], reference["vision_logit"], rtol=1e-6,
                             atol=1e-6)
  # The cut really computes less: fewer FLOPs in the compiled forward.
  flops = lambda outputs: jax.jit(lambda p: model.apply({"params": p}, **inputs,
                                                        outputs=outputs)).lower(
      params).compile().cost_analysis()["flops"]
  assert flops(pooled) < flops(pooled + ("sequence_output_v",)) < flops(
      pooled + ("sequence_output_v", "sequence_output_t"))


def test_pooled_only_cut_keeps_the_loss_and_gradients(tiny):
  """Training through the cut last layers: the same loss and gradients as the full layers."""
  model, params = tiny
  cfg = model.config
  task = get_task("vqa")
  batch = random_batch(task, 4, vocab_size=cfg.vocab_size, feature_size=cfg.v_feature_size,
                       num_vqa_answers=cfg.num_vqa_answers, num_gqa_answers=cfg.num_gqa_answers)

  def loss_and_grads(extra_outputs):
    def loss(p):
      outputs = task_outputs(model.apply, p, task, batch, extra_outputs=extra_outputs)
      return task.head.loss(outputs, batch, task)
    return jax.jit(jax.value_and_grad(loss))(params)

  (cut_loss, cut), (full_loss, full) = (loss_and_grads(()), loss_and_grads(
      ("sequence_output_t", "sequence_output_v")))
  np.testing.assert_allclose(float(cut_loss), float(full_loss), rtol=1e-6)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(full))
  cut_flat = traverse_util.flatten_dict(cut, sep="/")
  for path, g in traverse_util.flatten_dict(full, sep="/").items():
    assert float(jnp.abs(g - cut_flat[path]).max()) <= 1e-6 * scale, path


def test_bfloat16_model_initialises_float32_params_and_moments():
  # `dtype` is the compute dtype only: a model built for bfloat16 must still create float32
  # parameters (and so float32 Adam moments and gradients).
  from twelve_in_one.train.steps import create_state
  model = ViLBertForVLTasks(tiny_config(dtype="bfloat16"))
  params = init_params(model, jax.random.key(0))
  state = create_state(params)
  assert {x.dtype for x in jax.tree.leaves((params, state.opt_state))
          if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype("float32")}
  inputs = _inputs()
  forward = lambda p: model.apply({"params": p}, **inputs, outputs=("vil_logit",))["vil_logit"]
  assert jax.jit(forward)(params).dtype == jnp.bfloat16
  grads = jax.jit(jax.grad(lambda p: forward(p).astype(jnp.float32).sum()))(params)
  assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype("float32")}


def test_accelerator_configs_compute_in_bfloat16_and_cpu_configs_in_float32():
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "twelve_in_one.py")
  spec = importlib.util.spec_from_file_location("twelve_in_one_config_dtypes", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for variant in ("twelve_in_one", "single:vqa", "finetune:refcoco"):
    assert module.get_config(variant).model.dtype == "bfloat16", variant
  for variant in ("smoke", "tiny"):
    assert module.get_config(variant).model.dtype == "float32", variant
