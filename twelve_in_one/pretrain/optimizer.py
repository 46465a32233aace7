"""The optimizer of `train_concap.py` as an optax chain: AdamW with bias correction.

`pytorch_transformers` 1.x `AdamW(lr, betas=(0.9, 0.98), eps=1e-8)` with its default
`correct_bias=True`, one param group per parameter, as the official pretraining builds them.
At update t (1-based), for each parameter:

    m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g²
    p = p - lr * (sqrt(1 - b2^t) / (1 - b1^t)) * m / (sqrt(v) + eps)
    p = p - lr * wd * p                       # decoupled decay, of the updated p

The correction multiplies the step size; eps is added to the uncorrected sqrt(v). That is not
`optax.scale_by_adam` (which adds eps to the corrected one, so its effective eps differs by
sqrt(1 - b2^t)), hence `scale_by_adam_with_step_size_correction` here.

`build` chains it with the multi-task optimizer's pieces (`train/transforms.py`):

    chain(clip_by_global_norm,               # only with clip_grad_norm > 0 (the official: none)
          scale_by_adam_with_step_size_correction,
          scale_by_learning_rates,           # each parameter's lr x the schedule's multiplier
          decay_updated_parameters)          # AdamW's decoupled decay, substring mask

Parameter groups, decided on the official parameter names:

* weight decay 0.01 unless the name contains "bias", "LayerNorm.bias" or "LayerNorm.weight"
  (the official `no_decay` substring rule, `optimizer.weight_decay_mask`);
* learning rate `lr`, times `bert_lr_scale` for the BERT text weights (the names of
  `config/bert-base-uncased_weight_name.json`: the text embeddings and text layers).
  `train_concap.py` means to give them lr x 0.1 when it starts from BERT, but it tests
  `key[12:] in bert_weight_name`: 12 characters is the length of `module.bert.`, and the model
  is not wrapped yet when the groups are built, so no name matches and every parameter trains
  at the full rate. `bert_lr_scale=1.0` is what the script does; 0.1 what it meant.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

from twelve_in_one.train import transforms
from twelve_in_one.train.optimizer import rule_tree, weight_decay_mask

# The official BERT weight names (`bert-base-uncased_weight_name.json`) under `bert.`.
BERT_TEXT_WEIGHT = re.compile(r"^bert\.(embeddings\.(word_embeddings|position_embeddings|"
                              r"token_type_embeddings|LayerNorm)\.|encoder\.layer\.\d+\.)")


@dataclasses.dataclass(frozen=True)
class PretrainOptimizerConfig:
  """`config.optimizer` of a pretraining run (defaults: `train_concap.py`'s)."""
  lr: float = 1e-4
  bert_lr_scale: float = 1.0
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-8
  clip_grad_norm: float = 0.0   # global-norm clipping; 0 disables it (the official: none)

  def __post_init__(self):
    checks = (("lr", self.lr > 0, "> 0"),
              ("bert_lr_scale", self.bert_lr_scale > 0, "> 0"),
              ("weight_decay", self.weight_decay >= 0, ">= 0"),
              ("b1", 0 <= self.b1 < 1, "in [0, 1)"),
              ("b2", 0 <= self.b2 < 1, "in [0, 1)"),
              ("eps", self.eps > 0, "> 0"),
              ("clip_grad_norm", self.clip_grad_norm >= 0, ">= 0 (0 disables clipping)"))
    for key, ok, expected in checks:
      value = getattr(self, key)
      if not (ok and math.isfinite(value)):
        raise ValueError(f"config.optimizer.{key}={value!r}; expected a number {expected}")


def _log(beta: float) -> jax.Array:
  """log(beta) as float32 (-inf for 0, where the correction is 1)."""
  return jnp.float32(math.log(beta) if beta > 0 else -math.inf)


def scale_by_adam_with_step_size_correction(b1: float, b2: float,
                                            eps: float) -> optax.GradientTransformation:
  """`sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`: torch AdamW's corrected step.

  The state is optax's `ScaleByAdamState` (count, mu, nu), so its moments shard like the
  parameters (`optimizer.state_shardings`).
  """

  def init(params):
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=jax.tree.map(jnp.zeros_like, params),
                                  nu=jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g.astype(m.dtype), updates, state.mu)
    nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * g.astype(v.dtype) * g.astype(v.dtype),
                      updates, state.nu)
    count = optax.safe_increment(state.count)
    # torch computes the step size in double and casts it to float32. `1 - b^t` directly in
    # float32 would cancel (1 - 0.98f is 0.02 to only 1e-6), so it is `-expm1(t * log b)`
    # with log b rounded once: a few float32 roundings of the double value.
    t = count.astype(jnp.float32)
    step_size = (jnp.sqrt(-jnp.expm1(t * _log(b2))) / -jnp.expm1(t * _log(b1)))
    scaled = jax.tree.map(lambda m, v: step_size * (m / (jnp.sqrt(v) + eps)), mu, nu)
    return scaled, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def learning_rates(params: Any, config: PretrainOptimizerConfig, model_config=None) -> Any:
  """Each parameter's base learning rate (see the module docstring)."""
  bert_lr = config.lr * config.bert_lr_scale
  return rule_tree(params, lambda name: bert_lr if BERT_TEXT_WEIGHT.match(name) else config.lr,
                   model_config)


def build(config: PretrainOptimizerConfig, params: Any,
          model_config=None) -> optax.GradientTransformationExtraArgs:
  """The chain; `update(grads, state, params, lr_multiplier=...)`.

  `params` may be abstract (shapes only); with stacked layers (`scan_layers`) `model_config`
  lets the rules see each layer's official name.
  """
  lrs = learning_rates(params, config, model_config)
  decays = weight_decay_mask(params, model_config)
  parts = []
  if config.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(config.clip_grad_norm))
  parts += [scale_by_adam_with_step_size_correction(config.b1, config.b2, config.eps),
            transforms.scale_by_learning_rates(lrs),
            transforms.decay_updated_parameters(config.weight_decay, decays, lrs)]
  return optax.with_extra_args_support(optax.chain(*parts))


def init_state(params: Any, config: PretrainOptimizerConfig, model_config=None) -> Any:
  """Zero moments and count for `params`."""
  return build(config, params, model_config).init(params)
