"""Mesh presets: the mesh axis sizes and the logical-axis rules that map model names to them.

Not run directly; `configs/twelve_in_one.py` picks one with the `,mesh=PRESET` option of its
`:...,mesh=fsdp_tp`. Axes are ordered slow to fast: `data` (across slices / DCN), `fsdp`
(parameters and optimizer state sharded, batch split), `tensor` (heads and FFN split).

ViLBERT-base (270M parameters, sequences of 20-300 positions) fits FSDP alone up to large pods;
tensor parallelism only pays when the per-device batch gets very small.
"""

# Logical names used by the model (twelve_in_one/models): parameters and activations.
_FSDP_PARAMS = [("embed_t", "fsdp"), ("embed_v", "fsdp"), ("embed_bi", "fsdp")]
_TENSOR_PARAMS = [("qkv", "tensor"), ("mlp", "tensor"), ("vocab", "tensor")]
_BATCH = [("batch", ("data", "fsdp"))]


def preset(name: str) -> tuple[dict, list]:
  """(mesh axis sizes, logical-axis rules) of a named preset. -1 takes the remaining devices."""
  if name == "dp":          # pure data parallelism: parameters replicated
    return {"data": -1, "fsdp": 1, "tensor": 1}, _BATCH
  if name == "fsdp":        # the default: fully sharded data parallelism
    return {"data": 1, "fsdp": -1, "tensor": 1}, _BATCH + _FSDP_PARAMS
  if name == "fsdp_tp":     # FSDP with 2-way tensor parallelism
    return {"data": 1, "fsdp": -1, "tensor": 2}, _BATCH + _FSDP_PARAMS + _TENSOR_PARAMS
  if name == "dp_tp":       # data parallelism with 2-way tensor parallelism
    return {"data": -1, "fsdp": 1, "tensor": 2}, _BATCH + _TENSOR_PARAMS
  raise ValueError(f"unknown mesh preset {name!r}; expected dp, fsdp, fsdp_tp or dp_tp")
