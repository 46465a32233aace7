"""The official optimizer as an optax chain: AdamW without bias correction, per-group learning
rates, the substring weight-decay rule and the mask of parameters a task's step may touch.

`pytorch_transformers` 1.2.0 `AdamW(correct_bias=False)`, betas (0.9, 0.999), eps 1e-6, one
param group per parameter, as `train_tasks.py` builds them:

    m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g²
    p = p - lr * m / (sqrt(v) + eps)
    p = p - lr * wd * p                      # decoupled decay, applied to the updated p

`build` chains it from optax transformations (`transforms.py` has the ones optax lacks):

    only_reached(                          # which parameters this task's step touches
        chain(clip_by_global_norm,         # only with clip_grad_norm > 0 (the official: none)
              scale_by_adam_without_bias_correction | scale_by_radam + add_decayed_weights,
              scale_by_learning_rates,     # each parameter's group lr x the schedule
              decay_updated_parameters))   # AdamW's decoupled decay, substring mask

Parameter groups are decided on the *official* parameter name (the same strings):
* lr = `head_lr` (1e-4) if the name contains "vil_", else `base_lr` (the run's smallest task
  lr, 2e-5); with `vision_scratch`, every parameter that is not a BERT text weight also gets
  `head_lr` (what the official flag's help describes);
* wd = 0 if the name contains "bias", "LayerNorm.bias" or "LayerNorm.weight", else 0.01. This
  substring rule decays `biOutput.LayerNorm1/2.weight` and the heads' `logit_fc.2.weight`
  (LayerNorm scales under other names); we keep it, as the released model was trained so.
* kept out of the optimizer: with `freeze` N >= 0 the BERT text embeddings and text layers
  0..N (the official `--freeze`); with the model JSON's `fixed_t_layer` / `fixed_v_layer` N > 0
  the text (visual) embeddings and layers 0..N-1, which the official encoder runs under
  `torch.no_grad()` so they never get a gradient.

The official `--freeze` and `--vision_scratch` compare `name[12:]` with the BERT weight names,
which only lines up when the model is wrapped (`module.bert.`); `train_tasks.py` wraps it after
that test, so there the flags change nothing. Here they do what they say.

RAdam (`name="radam"`) is `optax.scale_by_radam` with the official RAdam's eps 1e-8 and its
decay of the *old* parameter (`optax.add_decayed_weights`). Two differences remain: the
official RAdam counts steps per parameter, optax per optimizer, so a head's rectification
term follows the number of updates of the whole run rather than of its own task; and optax
adds eps to sqrt(v / (1 - b2^t)) where the official adds it to sqrt(v), a relative change of
the step below 1e-8 / sqrt(v) (tests/test_optimizer_torch.py bounds it).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.interpreters import partial_eval

from twelve_in_one.interop.names import official_name
from twelve_in_one.train import transforms

NO_DECAY_SUBSTRINGS = ("bias", "LayerNorm.bias", "LayerNorm.weight")
OPTIMIZERS = ("adamw", "radam")
RADAM_EPS = 1e-8    # the official RAdam's default; `train_tasks.py` passes only the lr
# The BERT text weights (`config/bert-base-uncased_weight_name.json` of the official code):
# the text embeddings but the task tokens, and the text layers.
_BERT_TEXT_WEIGHT = re.compile(r"^bert\.(embeddings\.(word_embeddings|position_embeddings|"
                               r"token_type_embeddings|LayerNorm)\.|encoder\.layer\.\d+\.)")
_TEXT_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.")
_VISUAL_LAYER = re.compile(r"^bert\.encoder\.v_layer\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = "adamw"
  base_lr: float = 2e-5
  head_lr: float = 1e-4
  head_substring: str = "vil_"
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-6
  # Global-norm gradient clipping (the reference has none): 0 disables it.
  clip_grad_norm: float = 0.0
  # What a step does to parameters its task does not reach: "torch1" (the released model's
  # torch 1.x: once reached, a parameter steps with a zero gradient) or "skip" (torch >= 2).
  unused_params: str = "torch1"
  vision_scratch: bool = False
  freeze: int = -1          # text layers 0..freeze (and the text embeddings) fixed; -1: none
  fixed_t_layer: int = 0    # the model JSON's: text embeddings and layers < N fixed
  fixed_v_layer: int = 0    # the model JSON's: visual embeddings and layers < N fixed

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"config.optimizer.name={self.name!r}; expected one of {OPTIMIZERS}")
    if self.unused_params not in transforms.UNUSED_PARAMS_MODES:
      raise ValueError(f"config.optimizer.unused_params={self.unused_params!r}; expected one "
                       f"of {transforms.UNUSED_PARAMS_MODES}")
    if self.clip_grad_norm < 0:
      raise ValueError(f"config.optimizer.clip_grad_norm={self.clip_grad_norm}; expected >= 0 "
                       "(0 disables clipping)")
    if self.freeze < -1:
      raise ValueError(f"config.optimizer.freeze={self.freeze}; expected -1 (none) or a text "
                       "layer index")


# ------------------------------------------------------------------ rules on official names
def rule_tree(params: Any, rule: Callable[[str], Any], model_config=None) -> Any:
  """`rule(official name)` for every parameter, as a tree like `params`.

  With stacked (scanned) layers the rule is evaluated per layer on the per-layer names and
  stacked back: a stack whose layers agree gets one value, otherwise an array with one value
  per layer, shaped to broadcast against the stacked leaf.
  """
  from twelve_in_one.models import scan   # models import nothing from train
  stacked = model_config is not None and scan.is_scanned(params, model_config)
  layout = (jax.eval_shape(lambda tree: scan.to_unrolled(tree, model_config), params)
            if stacked else params)
  flat = traverse_util.flatten_dict(layout)
  values = traverse_util.unflatten_dict(
      {path: np.asarray(rule(official_name(path)[0])) for path in flat})
  if not stacked:
    return jax.tree.map(lambda v: v.item(), values)
  values = scan.to_scanned(values, model_config)

  def collapse(value, leaf):
    value = np.asarray(value)
    if value.ndim == 0 or np.all(value == value.flat[0]):
      return value.flat[0].item()
    return value.reshape(value.shape + (1,) * (len(leaf.shape) - value.ndim))

  return jax.tree.map(collapse, values, params)


def learning_rates(params: Any, config: OptimizerConfig, model_config=None) -> Any:
  """The base learning rate of every parameter (floats, or per-layer arrays when stacked)."""
  def rule(name: str) -> float:
    if config.head_substring in name:
      return config.head_lr
    if config.vision_scratch and not _BERT_TEXT_WEIGHT.match(name):
      return config.head_lr
    return config.base_lr
  return rule_tree(params, rule, model_config)


def weight_decay_mask(params: Any, model_config=None) -> Any:
  """Whether each parameter decays (the official substring rule)."""
  return rule_tree(params, lambda name: not any(s in name for s in NO_DECAY_SUBSTRINGS),
                   model_config)


def is_frozen(name: str, config: OptimizerConfig) -> bool:
  """Whether the official parameter `name` is kept out of the optimizer."""
  if config.freeze >= 0 and _BERT_TEXT_WEIGHT.match(name):
    layer = _TEXT_LAYER.match(name)
    if layer is None or int(layer.group(1)) <= config.freeze:
      return True
  if config.fixed_t_layer > 0:
    layer = _TEXT_LAYER.match(name)
    if name.startswith("bert.embeddings.") or (layer and int(layer.group(1))
                                               < config.fixed_t_layer):
      return True
  if config.fixed_v_layer > 0:
    layer = _VISUAL_LAYER.match(name)
    if name.startswith("bert.v_embeddings.") or (layer and int(layer.group(1))
                                                 < config.fixed_v_layer):
      return True
  return False


def trainable_mask(params: Any, config: OptimizerConfig, model_config=None) -> Any | None:
  """Which parameters the optimizer may change (None when all may)."""
  if config.freeze < 0 and config.fixed_t_layer <= 0 and config.fixed_v_layer <= 0:
    return None
  return rule_tree(params, lambda name: not is_frozen(name, config), model_config)


def check_fixed_layers(config: OptimizerConfig, model_config, source: str) -> None:
  """The official encoder's asserts: the fixed layers end before the first co-attention."""
  for key, value, ids in (("fixed_t_layer", config.fixed_t_layer,
                           model_config.t_biattention_id),
                          ("fixed_v_layer", config.fixed_v_layer,
                           model_config.v_biattention_id)):
    if value < 0 or (ids and value > min(ids)):
      raise ValueError(f"{source}: {key}={value}; expected 0 <= {key} <= {min(ids or (0,))} "
                       "(the layers before the first co-attention block)")


# ------------------------------------------------------------------ reached parameters
def reached_by(loss_fn: Callable, params: Any, *args: Any) -> Any:
  """Which parameters `loss_fn(params, *args)` (first output) depends on: a tree of bools.

  This is what decides, in torch, whether a parameter gets a `.grad`: a parameter outside the
  loss's graph (another task's head, the text pooler for a task scored on regions) gets none.
  Dead-code elimination of the traced loss finds them; the arguments may be abstract.

  The unit is a leaf: a stacked leaf (`scan_layers`) or a layer recomputed by the custom VJP
  of `models/remat.py` counts as reached when any of it is. For a task scored on regions that
  takes in the text side of the last co-attention block, which the official leaves without a
  gradient. Under "torch1" that changes nothing once any task scored on the pooled vector has
  stepped (VQA, first in the paper's order, reaches them all); under "skip" those parameters
  then decay on that task's steps.
  """
  closed = jax.make_jaxpr(loss_fn)(params, *args)
  outputs = len(closed.jaxpr.outvars)
  _, used = partial_eval.dce_jaxpr(closed.jaxpr, [True] + [False] * (outputs - 1))
  leaves, treedef = jax.tree.flatten(params)
  return treedef.unflatten(used[:len(leaves)])


# ------------------------------------------------------------------ the chain
def build(config: OptimizerConfig, params: Any, reached: Any | None = None,
          model_config=None) -> optax.GradientTransformationExtraArgs:
  """The official optimizer for one task's step (`reached`: None means every parameter).

  `update(grads, state, params, lr_multiplier=...)`; the state is the same for every
  `reached`, so all tasks' steps share one.
  """
  lrs = learning_rates(params, config, model_config)
  decays = weight_decay_mask(params, model_config)
  parts = []
  if config.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(config.clip_grad_norm))
  if config.name == "adamw":
    parts += [transforms.scale_by_adam_without_bias_correction(config.b1, config.b2,
                                                               config.eps),
              transforms.scale_by_learning_rates(lrs),
              transforms.decay_updated_parameters(config.weight_decay, decays, lrs)]
  else:
    parts += [optax.scale_by_radam(config.b1, config.b2, RADAM_EPS),
              optax.add_decayed_weights(config.weight_decay, decays),
              transforms.scale_by_learning_rates(lrs)]
  if reached is None:
    reached = jax.tree.map(lambda _: True, params)
  return transforms.only_reached(optax.chain(*parts), reached, mode=config.unused_params,
                                 trainable=trainable_mask(params, config, model_config))


def init_state(params: Any, config: OptimizerConfig | None = None) -> Any:
  """The optimizer state for `params` (zero moments, nothing reached yet)."""
  config = config or OptimizerConfig()
  return build(config, params).init(params)


def state_shardings(abstract_state: Any, params: Any, param_shardings: Any,
                    replicated: Any) -> Any:
  """Shardings of an optimizer state: each parameter's for the leaves that mirror it."""
  find = transforms.param_leaf_index(params)
  shardings = jax.tree.leaves(param_shardings)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: replicated if (i := find(path, leaf)) is None else shardings[i],
      abstract_state)


def global_norm(grads: Any) -> jax.Array:
  return optax.tree.norm(jax.tree.map(lambda g: g.astype(jnp.float32), grads))
