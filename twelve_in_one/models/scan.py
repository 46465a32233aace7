"""The encoder's layers as `nn.scan`s over stacked parameters (`config.scan_layers`).

Unrolled, the compiled step holds one copy of the code per layer: the 24 layers of the `base`
encoder make most of the step's executable and of its compile time (BENCHMARKS.md). Scanned as MaxText scans its decoder layers, it holds one body per stack.

The plan (`scan_plan`) follows the official schedule (`encoder.encoder_schedule`). Co-attention
block k is preceded by its text layers [t_biattention_id[k-1], t_biattention_id[k]) and its
visual layers [v_biattention_id[k-1], v_biattention_id[k]). For the released 6/6 config:

    text_layers_0_to_5 (T0..T5, one scan) | C0 | blocks_1_to_5 (T, V, C per step) | V5 T11

* The text layers before block 0 are one scan, `text_layers_0_to_{n-1}`.
* Block 0 with its visual layers (none in the released config) is unrolled. It is the only
  block with no text layer of its own, and the encoder records what enters it
  (`text_before_coattention`).
* Blocks 1..K-1 are grouped into runs of blocks with the same number of text and visual
  layers. Each run is one scan, `blocks_{a}_to_{b}`, whose step holds the block's text layers
  `text_j`, then its visual layers `visual_j`, then the co-attention layer `coattention`. The
  official 6/6 layout is uniform after block 0, so this is one scan of 5 steps.
* The layers after the last block are unrolled (one per stream in the released config). They
  are the ones the pooled-only cut computes at position 0 (`encoder.pooled_only_layers`), so
  the cut is unchanged.

Stacked leaves have a leading `layers` logical axis (`nn.PARTITION_NAME`), which
`configs/mesh.py` maps to no mesh axis. Dropout keys are split per step, so with dropout on
the masks differ from the unrolled model's; with dropout off the two compute the same function
(tests/test_scan.py). `to_scanned` and `to_unrolled` convert any tree laid out like the
parameters (parameters, gradients, sown intermediates) between the two layouts; the official
names stay per layer (`interop/official.py` converts through the unrolled layout).

`config.remat` recomputes the named layer kinds inside the scan with `nn.remat` and the
`nothing_saveable` policy. Inside a scan's loop XLA cannot hoist a step's recomputation out of
its backward iteration, so the plain `jax.checkpoint` saves memory there, on XLA:CPU too,
though less than `models/remat.py` saves in the unrolled step (BENCHMARKS.md). The unrolled
layers outside the stacks keep `models/remat.py`.

What scanning costs: the stacked layers' gradients are whole arrays, live together before the
optimizer reads them, where the unrolled step can update each layer as soon as its gradient
exists; on the CPU that, and the loop, make the step slower (BENCHMARKS.md). Parameter init draws other values than the unrolled model for the same
seed (keys are split per step); `interop.official.official_init` does not depend on the layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from twelve_in_one.models.co_attention import CoAttentionBlock
from twelve_in_one.models.config import ViLBertConfig
from twelve_in_one.models.transformer import Stream, TransformerLayer

# The checkpoint policy of the layers `config.remat` names, inside the scans: keep nothing of
# a recomputed layer but its inputs.
REMAT_POLICY = jax.checkpoint_policies.nothing_saveable
LAYERS_AXIS = "layers"
COATTENTION = "coattention"
# How the stacks' names begin (`scan_plan`); no official module name begins so.
STACK_PREFIXES = ("text_layers_", "blocks_")


@dataclasses.dataclass(frozen=True)
class Step:
  """One scan step: official text-layer, visual-layer and co-attention indices, in order."""
  text: tuple[int, ...]
  visual: tuple[int, ...]
  block: int | None

  @property
  def shape(self) -> tuple[int, int, bool]:
    return len(self.text), len(self.visual), self.block is not None

  def members(self) -> list[tuple[str, str]]:
    """(child name in the step, unrolled module name) for each layer of the step."""
    out = [(f"text_{j}", f"layer_{i}") for j, i in enumerate(self.text)]
    out += [(f"visual_{j}", f"v_layer_{i}") for j, i in enumerate(self.visual)]
    if self.block is not None:
      out.append((COATTENTION, f"c_layer_{self.block}"))
    return out


@dataclasses.dataclass(frozen=True)
class Stack:
  """Consecutive steps of one shape, run as one `nn.scan` named `name`."""
  name: str
  steps: tuple[Step, ...]

  @property
  def shape(self) -> tuple[int, int, bool]:
    return self.steps[0].shape


PlanEntry = Union[Stack, tuple[str, int]]


def scan_plan(config: ViLBertConfig) -> list[PlanEntry]:
  """The encoder as scanned stacks and unrolled ("t"|"v"|"c", index) entries, in order."""
  t_ids, v_ids = config.t_biattention_id, config.v_biattention_id
  if not t_ids:
    return ([("v", j) for j in range(config.v_num_hidden_layers)]
            + [("t", i) for i in range(config.num_hidden_layers)])
  plan: list[PlanEntry] = []
  if t_ids[0]:
    plan.append(Stack(f"text_layers_0_to_{t_ids[0] - 1}",
                      tuple(Step((i,), (), None) for i in range(t_ids[0]))))
  plan += [("v", j) for j in range(v_ids[0])]
  plan.append(("c", 0))
  run: list[Step] = []

  def close_run():
    if run:
      plan.append(Stack(f"blocks_{run[0].block}_to_{run[-1].block}", tuple(run)))
      run.clear()
  for k in range(1, len(t_ids)):
    step = Step(tuple(range(t_ids[k - 1], t_ids[k])), tuple(range(v_ids[k - 1], v_ids[k])), k)
    if run and run[0].shape != step.shape:
      close_run()
    run.append(step)
  close_run()
  plan += [("v", j) for j in range(v_ids[-1], config.v_num_hidden_layers)]
  plan += [("t", i) for i in range(t_ids[-1], config.num_hidden_layers)]
  return plan


def stacks(config: ViLBertConfig) -> list[Stack]:
  return [entry for entry in scan_plan(config) if isinstance(entry, Stack)]


class EncoderStep(nn.Module):
  """The body of a scan: `num_text` text layers, `num_visual` visual layers, then (with
  `coattention`) a co-attention block. The carry is (text, visual); visual is None in a
  text-only stack."""
  config: ViLBertConfig
  num_text: int
  num_visual: int
  coattention: bool
  deterministic: bool

  @nn.compact
  def __call__(self, carry: tuple[jax.Array, jax.Array | None], text_bias: jax.Array,
               visual_bias: jax.Array, text_mask: jax.Array) -> tuple[tuple, None]:
    cfg = self.config
    text, visual = carry
    kinds = cfg.remat_kinds

    def layer_class(module_class, kind: str, deterministic_at: int):
      # `deterministic` is a Python bool; static_argnums counts `self`.
      if kind not in kinds:
        return module_class
      return nn.remat(module_class, policy=REMAT_POLICY, prevent_cse=False,
                      static_argnums=(deterministic_at,))
    text_layer = layer_class(TransformerLayer, "t", 3)
    visual_layer = layer_class(TransformerLayer, "v", 3)
    for j in range(self.num_text):
      text = text_layer(cfg, Stream.text(cfg), name=f"text_{j}")(text, text_bias,
                                                                 self.deterministic)
    for j in range(self.num_visual):
      visual = visual_layer(cfg, Stream.visual(cfg), cfg.dynamic_attention,
                            name=f"visual_{j}")(visual, visual_bias, self.deterministic, text,
                                                text_mask)
    if self.coattention:
      visual, text = layer_class(CoAttentionBlock, "c", 5)(cfg, name=COATTENTION)(
          visual, visual_bias, text, text_bias, self.deterministic)
    return (text, visual), None


def run_stack(stack: Stack, config: ViLBertConfig, deterministic: bool, text: jax.Array,
              visual: jax.Array, text_bias: jax.Array, visual_bias: jax.Array,
              text_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Runs `stack` as one `nn.scan` named `stack.name`; call inside a compact method."""
  num_text, num_visual, coattention = stack.shape
  scanned = nn.scan(EncoderStep, variable_axes={"params": 0, "intermediates": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                    length=len(stack.steps), metadata_params={nn.PARTITION_NAME: LAYERS_AXIS})
  touches_visual = num_visual > 0 or coattention
  (text, new_visual), _ = scanned(config, num_text, num_visual, coattention, deterministic,
                                  name=stack.name)(
      (text, visual if touches_visual else None), text_bias, visual_bias, text_mask)
  return text, (new_visual if touches_visual else visual)


# ------------------------------------------------------------------- layout conversion
def _stack_leaves(*leaves: Any) -> Any:
  if all(isinstance(leaf, (np.ndarray, np.generic)) for leaf in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _encoder(tree: Mapping[str, Any]) -> Mapping[str, Any]:
  try:
    return tree["bert"]["encoder"]
  except (KeyError, TypeError):
    raise ValueError("expected a tree laid out like the parameters, with bert/encoder") from None


def _with_encoder(tree: Mapping[str, Any], encoder: dict) -> dict:
  out = dict(tree)
  out["bert"] = dict(tree["bert"])
  out["bert"]["encoder"] = encoder
  return out


def is_scanned(tree: Mapping[str, Any], config: ViLBertConfig) -> bool:
  """Whether `tree` (parameters or alike) holds `config`'s stacks rather than its layers."""
  encoder = _encoder(tree)
  names = [stack.name for stack in stacks(config)]
  return bool(names) and all(name in encoder for name in names)


def to_scanned(tree: Mapping[str, Any], config: ViLBertConfig) -> dict:
  """A tree in the unrolled layout (`layer_i`, `v_layer_j`, `c_layer_k`) -> the scanned one.

  Works on any tree shaped like the parameters (numpy arrays stay numpy). The layers of each
  stack are stacked along a new leading axis, in the order of its steps.

  Raises:
    ValueError: a layer a stack needs is missing, or the layers of one stack differ in
      structure or shape.
  """
  encoder = dict(_encoder(tree))
  for stack in stacks(config):
    stacked = {}
    for child, _ in stack.steps[0].members():
      sources = [dict(step.members())[child] for step in stack.steps]
      missing = [name for name in sources if name not in encoder]
      if len(missing) == len(sources):
        continue      # a tree without that layer kind (e.g. sown co-attention maps only)
      if missing:
        raise ValueError(f"to_scanned: bert/encoder/{missing[0]} is missing; {stack.name} "
                         f"stacks {sources}")
      try:
        stacked[child] = jax.tree.map(_stack_leaves, *[encoder[name] for name in sources])
      except (ValueError, TypeError) as e:
        raise ValueError(f"to_scanned: {sources} cannot be stacked into {stack.name}/{child} "
                         f"({e})") from None
      for name in sources:
        del encoder[name]
    if stacked:
      encoder[stack.name] = stacked
  return _with_encoder(tree, encoder)


def to_unrolled(tree: Mapping[str, Any], config: ViLBertConfig) -> dict:
  """The inverse of `to_scanned`: each stack's leaves split back into per-layer entries.

  The per-layer leaves are views (numpy) or slices of the stacked ones; values are unchanged,
  so scanned -> unrolled -> scanned is bitwise exact.
  """
  encoder = dict(_encoder(tree))
  for stack in stacks(config):
    if stack.name not in encoder:
      continue
    stacked = encoder.pop(stack.name)
    for index, step in enumerate(stack.steps):
      for child, name in step.members():
        if child in stacked:
          encoder[name] = jax.tree.map(lambda leaf, i=index: leaf[i], stacked[child])
  return _with_encoder(tree, encoder)


def to_layout(tree: Mapping[str, Any], config: ViLBertConfig) -> dict:
  """`tree` in `config`'s layout (scanned when `config.scan_layers`), whichever it is in."""
  scanned = is_scanned(tree, config)
  if config.scan_layers and not scanned:
    return to_scanned(tree, config)
  if not config.scan_layers and scanned:
    return to_unrolled(tree, config)
  return dict(tree)


def coattention_maps(intermediates: Mapping[str, Any], config: ViLBertConfig) -> dict:
  """The sown co-attention probabilities by block, `c_layer_k` -> {text_to_image, ...}.

  `intermediates` is the `intermediates` collection of an apply with it mutable, in either
  layout; each entry is what `BiAttention` sowed for that block.
  """
  unrolled = to_unrolled(intermediates, config)
  encoder = _encoder(unrolled)
  return {f"c_layer_{k}": encoder[f"c_layer_{k}"]["biattention"]
          for k in range(config.num_co_attention_blocks) if f"c_layer_{k}" in encoder}
