"""The official PyTorch model, optimizers and VQA training step, re-expressed.

The speed goals are ratios to the official code *measured within one run*, but the official
code (facebookresearch/vilbert-multi-task) is not installed on our machines and its anchor
figures were taken on a different CPU. This module re-expresses, op for op, what the official
code runs for one VQA training step, so `benchmarks/train_step.py --official` can time it in
the same run as ours; the tests also use it as the official reference where no fixture covers
an option (`dynamic_attention`, `fusion_method="sum"`, RAdam, torch 1.x's `zero_grad()`):

* `OfficialViLBert`: `VILBertForVLTasks` with the official parameter names (a released
  `state_dict` loads with `strict=True`), the official computation order and its unfused ops:
  separate Q/K/V `Linear`s, `transpose_for_scores`, the python erf-GELU, the fallback
  `BertLayerNorm` (apex absent), additive -10000 masks, and **every head**, the pretraining
  heads included, in every forward (the official forward always computes them all), with
  the config's `fusion_method` and `dynamic_attention`;
* `OfficialAdamW`: `pytorch_transformers` 1.2.0 `AdamW(correct_bias=False)`, a python loop over
  one param group per parameter, as `train_tasks.py` builds them; `OfficialRAdam`, its
  `--optim RAdam`;
* `vqa_training_step`: `ForwardModelsTrain` for a VL-classifier task (BCE mean x 3129, batch
  score), the loss scale, `backward()`, `optimizer.step()`, `model.zero_grad()` (torch 1.x's
  zeroing, or torch 2's `set_to_none`).

`official_step.py` times it in a process of its own. `tests/test_official_torch.py` checks it
against the fixture made by running the official code (`shared/fixtures/vilbert_tiny`): every
forward output, every gradient of the VQA loss and the parameters after 1 and 3 optimizer
steps. It imports only torch and numpy, so a process timing
it carries none of JAX's memory.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

NUM_VQA_ANSWERS, NUM_GQA_ANSWERS, NUM_TASK_EMBEDDINGS = 3129, 1533, 20


def gelu(x: torch.Tensor) -> torch.Tensor:
  """The official python GELU (exact erf form), not `nn.GELU`: the same unfused ops."""
  return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class BertLayerNorm(nn.Module):
  """The official fallback LayerNorm (apex absent): eps inside the square root, unfused."""

  def __init__(self, size: int, eps: float = 1e-12):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(size))
    self.bias = nn.Parameter(torch.zeros(size))
    self.variance_epsilon = eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    u = x.mean(-1, keepdim=True)
    s = (x - u).pow(2).mean(-1, keepdim=True)
    x = (x - u) / torch.sqrt(s + self.variance_epsilon)
    return self.weight * x + self.bias


class _Dense(nn.Module):
  """`dense` (+ activation) or `dense` + dropout + residual + LayerNorm, under official names."""

  def __init__(self, d_in: int, d_out: int, dropout: float, residual: bool):
    super().__init__()
    self.dense = nn.Linear(d_in, d_out)
    self.residual = residual
    if residual:
      self.LayerNorm = BertLayerNorm(d_out)
      self.dropout = nn.Dropout(dropout)

  def forward(self, x, input_tensor=None):
    if not self.residual:
      return gelu(self.dense(x))
    return self.LayerNorm(self.dropout(self.dense(x)) + input_tensor)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
  """`transpose_for_scores`: (B, L, H*D) -> (B, H, L, D)."""
  return x.view(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads)).permute(0, 2, 1, 3)


def _attend(query, key, value, mask, num_heads: int, dropout: nn.Dropout) -> torch.Tensor:
  query, key, value = (_heads(t, num_heads) for t in (query, key, value))
  scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1]) + mask
  probs = dropout(nn.Softmax(dim=-1)(scores))
  context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()
  return context.view(context.shape[:-2] + (-1,))


class _SelfAttention(nn.Module):
  """With `text_width` (the visual layers under `dynamic_attention`), `BertImageSelfAttention`:
  queries and keys gated by 1 + sigmoid(dyLinear(masked mean of the text states))."""

  def __init__(self, width: int, num_heads: int, dropout: float, text_width: int = 0):
    super().__init__()
    self.num_heads = num_heads
    self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
    if text_width:
      self.dyLinear_q, self.dyLinear_k = nn.Linear(text_width, width), nn.Linear(text_width,
                                                                                 width)
    self.dynamic = bool(text_width)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x, mask, text=None, text_keep=None):
    query, key = self.query(x), self.key(x)
    if self.dynamic:
      pooled = (text * text_keep).sum(1) / text_keep.sum(1)
      query = query * (1 + torch.sigmoid(self.dyLinear_q(pooled))).unsqueeze(1)
      key = key * (1 + torch.sigmoid(self.dyLinear_k(pooled))).unsqueeze(1)
    return _attend(query, key, self.value(x), mask, self.num_heads, self.dropout)


class _Attention(nn.Module):
  def __init__(self, width: int, num_heads: int, attn_dropout: float, dropout: float,
               text_width: int = 0):
    super().__init__()
    self.self = _SelfAttention(width, num_heads, attn_dropout, text_width)
    self.output = _Dense(width, width, dropout, residual=True)

  def forward(self, x, mask, text=None, text_keep=None):
    return self.output(self.self(x, mask, text, text_keep), x)


class BertLayer(nn.Module):
  """Post-LN BERT layer; the visual `BertImageLayer` is the same at its own width."""

  def __init__(self, width: int, inner: int, num_heads: int, attn_dropout: float,
               dropout: float, text_width: int = 0):
    super().__init__()
    self.attention = _Attention(width, num_heads, attn_dropout, dropout, text_width)
    self.intermediate = _Dense(width, inner, dropout, residual=False)
    self.output = _Dense(inner, width, dropout, residual=True)

  def forward(self, x, mask, text=None, text_keep=None):
    attention = self.attention(x, mask, text, text_keep)
    return self.output(self.intermediate(attention), attention)


class _BiAttention(nn.Module):
  def __init__(self, c: Mapping[str, Any]):
    super().__init__()
    bi, v, h = c["bi_hidden_size"], c["v_hidden_size"], c["hidden_size"]
    self.num_heads = c["bi_num_attention_heads"]
    self.query1, self.key1, self.value1 = (nn.Linear(v, bi) for _ in range(3))
    self.dropout1 = nn.Dropout(c["v_attention_probs_dropout_prob"])
    self.query2, self.key2, self.value2 = (nn.Linear(h, bi) for _ in range(3))
    self.dropout2 = nn.Dropout(c["attention_probs_dropout_prob"])

  def forward(self, vision, vision_mask, text, text_mask):
    # The official order: all vision projections, then all text projections.
    q1, k1, v1 = self.query1(vision), self.key1(vision), self.value1(vision)
    q2, k2, v2 = self.query2(text), self.key2(text), self.value2(text)
    text_context = _attend(q2, k1, v1, vision_mask, self.num_heads, self.dropout1)
    vision_context = _attend(q1, k2, v2, text_mask, self.num_heads, self.dropout2)
    return text_context, vision_context


class _BiOutput(nn.Module):
  def __init__(self, c: Mapping[str, Any]):
    super().__init__()
    bi, v, h = c["bi_hidden_size"], c["v_hidden_size"], c["hidden_size"]
    self.dense1, self.LayerNorm1 = nn.Linear(bi, v), BertLayerNorm(v)
    self.dropout1 = nn.Dropout(c["v_hidden_dropout_prob"])
    self.q_dense1 = nn.Linear(bi, v)        # in every checkpoint, never in forward
    self.dense2, self.LayerNorm2 = nn.Linear(bi, h), BertLayerNorm(h)
    self.dropout2 = nn.Dropout(c["hidden_dropout_prob"])
    self.q_dense2 = nn.Linear(bi, h)

  def forward(self, vision_context, vision, text_context, text):
    vision_out = self.LayerNorm1(self.dropout1(self.dense1(vision_context)) + vision)
    text_out = self.LayerNorm2(self.dropout2(self.dense2(text_context)) + text)
    return vision_out, text_out


class BertConnectionLayer(nn.Module):
  """The co-attention block: bi-attention, its outputs, then one FFN per stream."""

  def __init__(self, c: Mapping[str, Any]):
    super().__init__()
    v, vi, h, hi = (c["v_hidden_size"], c["v_intermediate_size"], c["hidden_size"],
                    c["intermediate_size"])
    self.biattention, self.biOutput = _BiAttention(c), _BiOutput(c)
    self.v_intermediate = _Dense(v, vi, 0.0, residual=False)
    self.v_output = _Dense(vi, v, c["v_hidden_dropout_prob"], residual=True)
    self.t_intermediate = _Dense(h, hi, 0.0, residual=False)
    self.t_output = _Dense(hi, h, c["hidden_dropout_prob"], residual=True)

  def forward(self, vision, vision_mask, text, text_mask):
    text_context, vision_context = self.biattention(vision, vision_mask, text, text_mask)
    vision, text = self.biOutput(vision_context, vision, text_context, text)
    vision = self.v_output(self.v_intermediate(vision), vision)
    text = self.t_output(self.t_intermediate(text), text)
    return vision, text


class _Encoder(nn.Module):
  def __init__(self, c: Mapping[str, Any]):
    super().__init__()
    self.t_ids, self.v_ids = list(c["t_biattention_id"]), list(c["v_biattention_id"])
    self.layer = nn.ModuleList(
        BertLayer(c["hidden_size"], c["intermediate_size"], c["num_attention_heads"],
                  c["attention_probs_dropout_prob"], c["hidden_dropout_prob"])
        for _ in range(c["num_hidden_layers"]))
    dynamic = c["hidden_size"] if c.get("dynamic_attention", False) else 0
    self.v_layer = nn.ModuleList(
        BertLayer(c["v_hidden_size"], c["v_intermediate_size"], c["v_num_attention_heads"],
                  c["v_attention_probs_dropout_prob"], c["v_hidden_dropout_prob"], dynamic)
        for _ in range(c["v_num_hidden_layers"]))
    self.c_layer = nn.ModuleList(BertConnectionLayer(c) for _ in self.v_ids)

  def forward(self, text, text_mask, vision, vision_mask, text_keep=None):
    """`text_keep`: (B, T+1, 1) ones on real tokens (the visual layers' dynamic attention)."""
    t_start = v_start = 0
    for block, (v_id, t_id) in enumerate(zip(self.v_ids, self.t_ids)):
      for layer in self.layer[t_start:t_id]:
        text = layer(text, text_mask)
      for layer in self.v_layer[v_start:v_id]:
        vision = layer(vision, vision_mask, text, text_keep)
      vision, text = self.c_layer[block](vision, vision_mask, text, text_mask)
      t_start, v_start = t_id, v_id
    for layer in self.v_layer[v_start:]:
      vision = layer(vision, vision_mask, text, text_keep)
    for layer in self.layer[t_start:]:
      text = layer(text, text_mask)
    return text, vision


class _TextEmbeddings(nn.Module):
  def __init__(self, c: Mapping[str, Any]):
    super().__init__()
    h = c["hidden_size"]
    self.word_embeddings = nn.Embedding(c["vocab_size"], h, padding_idx=0)
    self.position_embeddings = nn.Embedding(c["max_position_embeddings"], h)
    self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], h)
    self.task_embeddings = nn.Embedding(NUM_TASK_EMBEDDINGS, h)
    self.LayerNorm, self.dropout = BertLayerNorm(h), nn.Dropout(c["hidden_dropout_prob"])

  def forward(self, input_ids, token_type_ids, task_ids):
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
         + self.token_type_embeddings(token_type_ids))
    # The task token goes right after [CLS], with no position or type embedding.
    x = torch.cat([x[:, :1], self.task_embeddings(task_ids), x[:, 1:]], dim=1)
    return self.dropout(self.LayerNorm(x))


class _ImageEmbeddings(nn.Module):
  def __init__(self, c: Mapping[str, Any]):
    super().__init__()
    v = c["v_hidden_size"]
    self.image_embeddings = nn.Linear(c["v_feature_size"], v)
    self.image_location_embeddings = nn.Linear(5, v)
    self.LayerNorm, self.dropout = BertLayerNorm(v), nn.Dropout(c["v_hidden_dropout_prob"])

  def forward(self, feat, loc):
    x = self.image_embeddings(feat) + self.image_location_embeddings(loc)
    return self.dropout(self.LayerNorm(x))


class _Pooler(nn.Module):
  def __init__(self, width: int, out: int):
    super().__init__()
    self.dense = nn.Linear(width, out)

  def forward(self, x):
    return torch.relu(self.dense(x[:, 0]))


class _Bert(nn.Module):
  def __init__(self, c: Mapping[str, Any]):
    super().__init__()
    self.embeddings, self.v_embeddings = _TextEmbeddings(c), _ImageEmbeddings(c)
    self.encoder = _Encoder(c)
    self.t_pooler = _Pooler(c["hidden_size"], c["bi_hidden_size"])
    self.v_pooler = _Pooler(c["v_hidden_size"], c["bi_hidden_size"])


class _Transform(nn.Module):
  def __init__(self, width: int):
    super().__init__()
    self.dense, self.LayerNorm = nn.Linear(width, width), BertLayerNorm(width)

  def forward(self, x):
    return self.LayerNorm(gelu(self.dense(x)))


class _Predictions(nn.Module):
  def __init__(self, width: int, vocab: int, decoder_bias: bool):
    super().__init__()
    self.transform = _Transform(width)
    self.decoder = nn.Linear(width, vocab, bias=decoder_bias)
    if not decoder_bias:
      self.bias = nn.Parameter(torch.zeros(vocab))

  def forward(self, x):
    x = self.decoder(self.transform(x))
    return x + self.bias if hasattr(self, "bias") else x


class _PretrainingHeads(nn.Module):
  def __init__(self, c: Mapping[str, Any], word_embeddings: nn.Parameter):
    super().__init__()
    self.predictions = _Predictions(c["hidden_size"], c["vocab_size"], decoder_bias=False)
    self.predictions.decoder.weight = word_embeddings        # tied, as in the official model
    self.bi_seq_relationship = nn.Linear(c["bi_hidden_size"], 2)
    self.imagePredictions = _Predictions(c["v_hidden_size"], c["v_target_size"], True)


class SimpleClassifier(nn.Module):
  def __init__(self, d_in: int, hidden: int, d_out: int):
    super().__init__()
    self.logit_fc = nn.Sequential(nn.Linear(d_in, hidden), nn.Identity(),
                                  BertLayerNorm(hidden), nn.Linear(hidden, d_out))

  def forward(self, x):
    fc = self.logit_fc
    return fc[3](fc[2](gelu(fc[0](x))))


class OfficialViLBert(nn.Module):
  """`VILBertForVLTasks` (task tokens) from an official JSON config dict, with its
  `fusion_method` ("mul" or "sum") and `dynamic_attention`."""

  OUTPUTS = ("vil_prediction", "vil_prediction_gqa", "vil_logit", "vil_binary_prediction",
             "vil_tri_prediction", "vision_prediction", "vision_logit",
             "linguisic_prediction", "linguisic_logit")

  def __init__(self, config: Mapping[str, Any], dropout_prob: float = 0.1):
    super().__init__()
    c = config
    bi, v, h = c["bi_hidden_size"], c["v_hidden_size"], c["hidden_size"]
    self.bert = _Bert(c)
    self.cls = _PretrainingHeads(c, self.bert.embeddings.word_embeddings.weight)
    self.dropout = nn.Dropout(dropout_prob)
    self.vil_prediction = SimpleClassifier(bi, 2 * bi, NUM_VQA_ANSWERS)
    self.vil_prediction_gqa = SimpleClassifier(bi, 2 * bi, NUM_GQA_ANSWERS)
    self.vil_binary_prediction = SimpleClassifier(2 * bi, 2 * bi, 2)
    self.vil_logit, self.vil_tri_prediction = nn.Linear(bi, 1), nn.Linear(bi, 3)
    self.vision_logit, self.linguisic_logit = nn.Linear(v, 1), nn.Linear(h, 1)
    self.fusion_method = c.get("fusion_method", "mul")
    self.apply(self._init)

  @staticmethod
  def _init(module: nn.Module) -> None:
    """The official init: N(0, 0.02) weights, zero biases, LayerNorm 1 / 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
      module.weight.data.normal_(0.0, 0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
      module.bias.data.zero_()

  def forward(self, input_ids, image_feat, image_loc, token_type_ids, attention_mask,
              image_mask, task_ids) -> dict[str, torch.Tensor]:
    dtype = image_feat.dtype
    text_mask = torch.cat([torch.ones_like(attention_mask[:, :1]), attention_mask], dim=1)
    text_bias = (1.0 - text_mask[:, None, None, :].to(dtype)) * -10000.0
    image_bias = (1.0 - image_mask[:, None, None, :].to(dtype)) * -10000.0
    text = self.bert.embeddings(input_ids, token_type_ids, task_ids)
    vision = self.bert.v_embeddings(image_feat, image_loc)
    text, vision = self.bert.encoder(text, text_bias, vision, image_bias,
                                     text_mask[:, :, None].to(dtype))
    pooled_t, pooled_v = self.bert.t_pooler(text), self.bert.v_pooler(vision)
    fuse = (lambda t, v: t + v) if self.fusion_method == "sum" else (lambda t, v: t * v)

    cls = self.cls
    out = {"linguisic_prediction": cls.predictions(text),
           "vision_prediction": cls.imagePredictions(vision)}
    seq_relationship = cls.bi_seq_relationship(self.dropout(fuse(pooled_t, pooled_v)))
    pooled = self.dropout(fuse(pooled_t, pooled_v))
    out["vil_prediction"] = self.vil_prediction(pooled)
    out["vil_prediction_gqa"] = self.vil_prediction_gqa(pooled)
    # Even batches pair consecutive rows (NLVR2); odd ones get the pretraining alignment head.
    out["vil_binary_prediction"] = (
        self.vil_binary_prediction(pooled.view(-1, pooled.shape[1] * 2))
        if pooled.shape[0] % 2 == 0 else seq_relationship)
    out["vil_logit"] = self.vil_logit(pooled)
    out["vil_tri_prediction"] = self.vil_tri_prediction(pooled)
    out["vision_logit"] = (self.vision_logit(self.dropout(vision))
                           + ((1.0 - image_mask.to(dtype)) * -10000.0).unsqueeze(2))
    out["linguisic_logit"] = self.linguisic_logit(self.dropout(text))
    return out


def load_official_state_dict(model: OfficialViLBert, state_dict: Mapping[str, np.ndarray]
                             ) -> None:
  """Loads an official state dict by name; `strict=True`, so any missing or extra name fails."""
  tensors = {name: torch.from_numpy(np.ascontiguousarray(value))
             for name, value in state_dict.items()}
  model.load_state_dict(tensors, strict=True)


def official_param_groups(model: nn.Module, base_lr: float = 2e-5, head_lr: float = 1e-4
                          ) -> list[dict]:
  """One group per parameter, as `train_tasks.py` builds them (substring rules included)."""
  no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")
  groups = []
  for name, param in dict(model.named_parameters()).items():   # the tied matrix once
    lr = head_lr if "vil_" in name else base_lr
    decay = 0.0 if any(nd in name for nd in no_decay) else 0.01
    groups.append({"params": [param], "lr": lr, "weight_decay": decay, "name": name})
  return groups


class OfficialAdamW(torch.optim.Optimizer):
  """`pytorch_transformers` 1.2.0 AdamW with `correct_bias=False`: no bias correction and the
  decoupled decay applied to the already-updated parameter."""

  def __init__(self, params, lr: float = 2e-5, betas=(0.9, 0.999), eps: float = 1e-6,
               weight_decay: float = 0.0):
    super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

  @torch.no_grad()
  def step(self, closure=None):
    for group in self.param_groups:
      beta1, beta2 = group["betas"]
      for p in group["params"]:
        if p.grad is None:
          continue
        state = self.state[p]
        if not state:
          state["step"] = 0
          state["exp_avg"] = torch.zeros_like(p)
          state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        exp_avg, exp_avg_sq, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        p.addcdiv_(exp_avg, denom, value=-group["lr"])
        if group["weight_decay"] > 0.0:
          p.add_(p, alpha=-group["lr"] * group["weight_decay"])


class OfficialRAdam(torch.optim.Optimizer):
  """`vilbert/optimization.py` RAdam (`--optim RAdam`): per-parameter step counts, SGD with
  momentum while the variance is intractable (N_sma < 5), the decay applied to the old
  parameter, eps 1e-8 (`train_tasks.py` passes only the groups and the lr)."""

  def __init__(self, params, lr: float = 2e-5, betas=(0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 0.0):
    super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

  @torch.no_grad()
  def step(self, closure=None):
    for group in self.param_groups:
      beta1, beta2 = group["betas"]
      for p in group["params"]:
        if p.grad is None:
          continue
        state = self.state[p]
        if not state:
          state["step"] = 0
          state["exp_avg"] = torch.zeros_like(p)
          state["exp_avg_sq"] = torch.zeros_like(p)
        exp_avg, exp_avg_sq, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        state["step"] += 1
        t = state["step"]
        beta2_t = beta2 ** t
        n_sma_max = 2 / (1 - beta2) - 1
        n_sma = n_sma_max - 2 * t * beta2_t / (1 - beta2_t)
        if n_sma >= 5:
          step_size = (group["lr"] * math.sqrt((1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4)
                                               * (n_sma - 2) / n_sma * n_sma_max
                                               / (n_sma_max - 2)) / (1 - beta1 ** t))
        else:
          step_size = group["lr"] / (1 - beta1 ** t)
        if group["weight_decay"] != 0:
          p.add_(p, alpha=-group["weight_decay"] * group["lr"])
        if n_sma >= 5:
          p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
        else:
          p.add_(exp_avg, alpha=-step_size)


# The official dataset's name of each tensor `vqa_loss` reads -> our batch layout's name.
OFFICIAL_BATCH_NAMES = {"question": "input_ids", "features": "image_feat",
                        "spatials": "image_loc", "segment_ids": "segment_ids",
                        "input_mask": "input_mask", "image_mask": "image_mask",
                        "target": "target"}


def official_batch(ours: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
  """A batch in our layout (numpy) as the official dataset yields it: its names, int64 ids."""
  batch = {}
  for official, name in OFFICIAL_BATCH_NAMES.items():
    value = np.asarray(ours[name])
    if value.dtype.kind in "iu":
      value = value.astype(np.int64)
    batch[official] = torch.from_numpy(np.ascontiguousarray(value))
  return batch


def vqa_loss(model: OfficialViLBert, batch: Mapping[str, torch.Tensor], task_id: int = 1
             ) -> tuple[torch.Tensor, torch.Tensor]:
  """`ForwardModelsTrain` for a VL-classifier task: (BCE mean x num answers, batch score).

  `batch` holds the dataset's tensors under the official names: `question`, `features`,
  `spatials`, `segment_ids`, `input_mask`, `image_mask`, `target`.
  """
  question = batch["question"]
  task_tokens = question.new_full((question.shape[0], 1), task_id)
  out = model(question, batch["features"], batch["spatials"], batch["segment_ids"],
              batch["input_mask"], batch["image_mask"], task_tokens)
  logits, target = out["vil_prediction"], batch["target"]
  loss = nn.BCEWithLogitsLoss(reduction="mean")(logits, target) * target.shape[1]
  predicted = torch.zeros_like(target).scatter_(1, logits.argmax(1, keepdim=True), 1.0)
  return loss, (predicted * target).sum() / float(question.shape[0])


def vqa_training_step(model: OfficialViLBert, optimizer: torch.optim.Optimizer,
                      batch: Mapping[str, torch.Tensor], task_id: int = 1,
                      loss_scale: float = 2.0, set_to_none: bool = True) -> tuple[float, float]:
  """One `train_tasks.py` update for a VL-classifier task; returns (loss, batch score).

  The loss scale is the task's lr over the run's smallest (2 for VQA in the 12-task run).
  `set_to_none=False` is torch 1.x's `zero_grad()`, which the released model was trained
  with: a parameter keeps a zero gradient once it had one, and the optimizer keeps stepping it.
  """
  loss, score = vqa_loss(model, batch, task_id)
  (loss * loss_scale).backward()
  optimizer.step()
  model.zero_grad(set_to_none=set_to_none)
  return loss.item(), score.item()

