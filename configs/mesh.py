"""Mesh presets: the mesh axis sizes and the logical-axis rules that map model names to them.

Not run directly; `configs/twelve_in_one.py` picks one with the `,mesh=PRESET` option of its
`:...,mesh=fsdp_tp`. Axes are ordered slow to fast: `data` (pure data parallelism: the axis
that may cross slices over DCN), `fsdp` (parameters and optimizer state sharded, batch split),
`tensor` (heads and FFN split).

Two sets of sizes describe the mesh, as MaxText's `ici_*` / `dcn_*_parallelism` do:

- `config.mesh.axes`: the sizes *within one slice* (over the fast ICI links); one may be -1,
  the slice's remaining devices. This is what a preset sets.
- `config.mesh.dcn_axes`: the sizes *across slices* (over the slower data-centre network);
  one may be -1, the remaining slices. The default, `DCN_AXES`, puts every slice on `data`,
  so each slice holds a full replica (sharded within it by the preset) and only the gradient
  all-reduce crosses DCN.

Each mesh axis is the product of the two. On one slice (and on CPU and single-host GPU, whose
devices have no slice index) `dcn_axes` resolves to all ones, so a single-slice job needs no
change; a multi-slice TPU job needs none either (the slices are found from the devices'
`slice_index`). To shard parameters across slices instead, override both `data` and `fsdp`:
`--config.mesh.dcn_axes.data=1 --config.mesh.dcn_axes.fsdp=-1`. On a multi-node GPU job,
`--config.mesh.dcn_granule=process` makes each process (host) count as a slice.

Examples, 2 slices of 16 chips: preset `fsdp` gives a mesh data=2 x fsdp=16 x tensor=1;
preset `fsdp_tp` gives data=2 x fsdp=8 x tensor=2.

ViLBERT-base (270M parameters, sequences of 20-300 positions) fits FSDP alone up to large pods;
tensor parallelism only pays when the per-device batch gets very small.
"""

# Across slices, by default: all data parallelism (see the module docstring).
DCN_AXES = {"data": -1, "fsdp": 1, "tensor": 1}

# Logical names used by the model (twelve_in_one/models): parameters and activations.
_FSDP_PARAMS = [("embed_t", "fsdp"), ("embed_v", "fsdp"), ("embed_bi", "fsdp")]
_TENSOR_PARAMS = [("qkv", "tensor"), ("mlp", "tensor"), ("vocab", "tensor")]
_BATCH = [("batch", ("data", "fsdp"))]
# The leading axis of stacked layers (`config.model.scan_layers`, models/scan.py): never
# split, as in MaxText without pipeline stages; each layer's own axes follow the rules above.
_LAYERS = [("layers", None)]


def preset(name: str) -> tuple[dict, list]:
  """(mesh axis sizes within a slice, logical-axis rules) of a named preset.

  -1 takes the slice's remaining devices.
  """
  if name == "dp":          # pure data parallelism: parameters replicated
    return {"data": -1, "fsdp": 1, "tensor": 1}, _BATCH + _LAYERS
  if name == "fsdp":        # the default: fully sharded data parallelism
    return {"data": 1, "fsdp": -1, "tensor": 1}, _BATCH + _FSDP_PARAMS + _LAYERS
  if name == "fsdp_tp":     # FSDP with 2-way tensor parallelism
    return {"data": 1, "fsdp": -1, "tensor": 2}, (_BATCH + _FSDP_PARAMS + _TENSOR_PARAMS
                                                 + _LAYERS)
  if name == "dp_tp":       # data parallelism with 2-way tensor parallelism
    return {"data": -1, "fsdp": 1, "tensor": 2}, _BATCH + _TENSOR_PARAMS + _LAYERS
  raise ValueError(f"unknown mesh preset {name!r}; expected dp, fsdp, fsdp_tp or dp_tp")
