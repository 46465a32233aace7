"""The jit-compiled pretraining steps and the state they start from.

    step = make_train_step(model.apply, settings)   # (state, batch, rng, lr_multiplier)
    eval_step = make_eval_step(model.apply, settings)   # (params, batch) -> losses

The training step is `train_concap.py`'s iteration: the objective's labels, the three losses
and `img_weight` (`losses.py`), one AdamW update (`optimizer.py`). With `grad_accum_steps` N the
batch is N equal micro-batches whose losses are averaged, as the official accumulation divides
each micro-batch's loss by N; micro-batch i draws its dropout from `fold_in(rng, i)`.

Validation computes the losses as the official validation loop does: with dropout off and with
every label (the official loop applies neither the objective-1 label drop nor the objective-2
zeroing there; objective 2's data has no misaligned pairs anyway).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from twelve_in_one.models.config import ViLBertConfig
from twelve_in_one.pretrain import optimizer as pretrain_optimizer
from twelve_in_one.pretrain.losses import LABELS, MODEL_INPUTS, pretraining_loss
from twelve_in_one.train.optimizer import global_norm
from twelve_in_one.train.steps import TrainState, all_finite

BATCH_KEYS = (*MODEL_INPUTS, *LABELS)
# The losses reported for every step and validation pass.
LOSS_KEYS = ("loss", "masked_lm_loss", "masked_img_loss", "next_sentence_loss")


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What the steps need besides the model: objective, optimizer, sharding rules."""
  objective: int
  img_weight: float
  optimizer: pretrain_optimizer.PretrainOptimizerConfig
  model: ViLBertConfig
  rules: tuple = ()
  grad_accum_steps: int = 1
  deterministic: bool = False


def model_batch(batch: dict) -> dict:
  """The keys a step reads (an evaluation batch's `example_mask` stays on the host)."""
  return {key: batch[key] for key in BATCH_KEYS}


def _losses(aux: dict) -> dict:
  return {key: aux[key] for key in LOSS_KEYS}


def _gradients(loss_fn: Callable, params: Any, batch: dict, rng: jax.Array, steps: int):
  """(mean loss, mean losses), mean gradient over `steps` equal micro-batches."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if steps == 1:
    (_, aux), grads = grad_fn(params, batch, rng)
    return _losses(aux), grads
  micro = jax.tree.map(lambda x: x.reshape((steps, x.shape[0] // steps) + x.shape[1:]), batch)

  def body(total_grads, micro_batch_and_index):
    micro_batch, index = micro_batch_and_index
    (_, aux), grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
    return jax.tree.map(jnp.add, total_grads, grads), _losses(aux)

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, losses = jax.lax.scan(body, zeros, (micro, jnp.arange(steps, dtype=jnp.uint32)))
  return (jax.tree.map(jnp.mean, losses), jax.tree.map(lambda g: g / steps, grads))


def make_train_step(apply_fn: Callable, settings: StepSettings) -> Callable:
  """The pure step `(state, batch, rng, lr_multiplier) -> (state, metrics)`.

  metrics: the losses (`LOSS_KEYS`), the gradient's global norm, and `finite`: whether the
  update left every parameter finite (`train.steps.all_finite`).
  """

  def loss_fn(params, batch, rng):
    return pretraining_loss(apply_fn, params, batch, objective=settings.objective,
                            img_weight=settings.img_weight,
                            deterministic=settings.deterministic, rng=rng)

  def step(state: TrainState, batch: dict, rng: jax.Array, lr_multiplier: jax.Array):
    with nn.logical_axis_rules(settings.rules):
      losses, grads = _gradients(loss_fn, state.params, model_batch(batch), rng,
                                 settings.grad_accum_steps)
    optimizer = pretrain_optimizer.build(settings.optimizer, state.params, settings.model)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params,
                                          lr_multiplier=lr_multiplier)
    params = optax.apply_updates(state.params, updates)
    grad_norm = global_norm(grads)
    everything = jax.tree.map(lambda _: True, params)
    metrics = dict(losses, grad_norm=grad_norm,
                   finite=all_finite(params, grad_norm, everything))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def make_eval_step(apply_fn: Callable, settings: StepSettings) -> Callable:
  """`(params, batch) -> losses` with dropout off and every label (module docstring)."""

  def step(params, batch):
    with nn.logical_axis_rules(settings.rules):
      _, aux = pretraining_loss(apply_fn, params, model_batch(batch), objective=0,
                                img_weight=settings.img_weight, deterministic=True)
    return _losses(aux)

  return step


def create_state(params: Any, settings: StepSettings) -> TrainState:
  """Update count 0, the given parameters, zero moments."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=pretrain_optimizer.init_state(params, settings.optimizer,
                                                            settings.model))
