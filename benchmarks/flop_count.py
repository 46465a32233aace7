"""GEMM FLOPs of the ViLBERT step: a hand count per part, and the dots of a compiled HLO module.

Used by `train_step.py` to turn step times into FLOP/s. The hand count is the convention of
the official-code anchor (68.6 GFLOP per VQA training example, GEMMs only).
"""

from __future__ import annotations

import re

from twelve_in_one.models.encoder import pooled_only_layers
from twelve_in_one.models.vilbert import TEXT_SEQUENCE_OUTPUTS, VISUAL_SEQUENCE_OUTPUTS


# ----------------------------------------------------------------------------- hand count
def gemm_flops(cfg, task, seq_len: int, num_regions: int,
               first_position_only: bool = True) -> dict[str, float]:
  """Forward GEMM FLOPs (2·M·N·K per matmul) of one model row, by part.

  seq_len counts the task token (VQA: 24); num_regions per model row (101). Attention counts
  both batched matmuls (Q·Kᵀ and P·V). Gathers (word/position/type/task embeddings), LayerNorm,
  GELU, softmax, dropout and the loss are not GEMMs and are not counted.

  `first_position_only` counts what our model runs: a stream's last layer at position 0 only
  where the task reads that stream through its pooler alone (`encoder.pooled_only_layers`).
  False counts every layer in full, as the official code runs them.
  """
  t, r = seq_len, num_regions
  h, hi, v, vi, bi = (cfg.hidden_size, cfg.intermediate_size, cfg.v_hidden_size,
                      cfg.v_intermediate_size, cfg.bi_hidden_size)
  mm = lambda m, n, k: 2.0 * m * n * k

  def layer(length, width, mlp, queries):
    # Keys and values at every position; queries, attention, output and FFN at `queries`.
    return (mm(length, 2 * width, width) + mm(queries, width, width)
            + mm(queries, length, width) * 2 + mm(queries, width, width)
            + mm(queries, mlp, width) + mm(queries, width, mlp))

  pruned = set()
  if first_position_only:
    pruned = pooled_only_layers(cfg, task.output in TEXT_SEQUENCE_OUTPUTS,
                                task.output in VISUAL_SEQUENCE_OUTPUTS)
  text_layers = sum(layer(t, h, hi, 1 if ("t", i) in pruned else t)
                    for i in range(cfg.num_hidden_layers))
  visual_layers = sum(layer(r, v, vi, 1 if ("v", i) in pruned else r)
                      for i in range(cfg.v_num_hidden_layers))
  last = lambda stream: " (the last at position 0)" if any(k == stream for k, _ in pruned) else ""
  co_block = (mm(r, 3 * bi, v) + mm(t, 3 * bi, h)            # query1/key1/value1, query2/...
              + 2 * (mm(t, r, bi) * 2)                        # text->image and image->text
              + mm(r, v, bi) + mm(t, h, bi)                   # biOutput dense1, dense2
              + mm(r, vi, v) + mm(r, v, vi)                   # v_intermediate, v_output
              + mm(t, hi, h) + mm(t, h, hi))                  # t_intermediate, t_output
  parts = {
      f"image embeddings ({cfg.v_feature_size}->{v}, box 5->{v})": mm(r, v, cfg.v_feature_size) + mm(r, v, 5),
      f"{cfg.num_hidden_layers} text layers @ {t} tokens{last('t')}": text_layers,
      f"{cfg.v_num_hidden_layers} visual layers @ {r} regions{last('v')}": visual_layers,
      f"{cfg.num_co_attention_blocks} co-attention blocks": cfg.num_co_attention_blocks
                                                              * co_block,
      f"poolers ({h}->{bi}, {v}->{bi})": mm(1, bi, h) + mm(1, bi, v),
  }
  two = 2 * bi
  head = {
      "VL-classifier": mm(1, two, bi) + mm(1, cfg.num_vqa_answers, two),
      "VL-classifier-GQA": mm(1, two, bi) + mm(1, cfg.num_gqa_answers, two),
      "VL-logit": mm(1, 1, bi),
      "VL-binary-classifier": (mm(1, two, two) + mm(1, 2, two)) / 2,   # per row (pairs of rows)
      "VL-tri-classifier": mm(1, 3, bi),
      "V-logit": mm(r, 1, v),
      "V-logit-mc": mm(r, 1, v),
  }[task.head_type]
  parts[f"task head ({task.output})"] = head
  return parts


def rows_per_example(task) -> int:
  """Model rows per task example: K options for retrieval, 2 images for NLVR2."""
  if task.process == "retrieval":
    return task.num_options
  return task.images_per_example


def training_gemm_flops(cfg, task, seq_len: int, num_regions: int,
                        first_position_only: bool = True) -> float:
  """Per example: 3x the forward (dX and dW per GEMM), less the image embeddings' dX.

  The region features and boxes are inputs, not parameters, so the backward of the first
  visual GEMMs computes only the weight gradient. (In a last layer at position 0 the keys'
  and values' input gradient is still a full GEMM, so 3x stays exact.)
  """
  parts = gemm_flops(cfg, task, seq_len, num_regions, first_position_only)
  forward = sum(parts.values())
  no_dx = 2.0 * num_regions * cfg.v_hidden_size * (cfg.v_feature_size + 5)
  return (3 * forward - no_dx) * rows_per_example(task)


# ----------------------------------------------------------------------------- HLO dot count
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[a-z0-9]+\[([0-9,]*)\]", re.M)
_OPERAND = r"(?:[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?\s+)?%?([\w.\-]+)"
_DOT = re.compile(r"=\s*[a-z0-9]+\[([0-9,]*)\](?:\{[^}]*\})?\s+dot\(" + _OPERAND + r",\s*"
                  + _OPERAND + r"\).*?lhs_contracting_dims=\{([0-9,]*)\}")


def hlo_dot_flops(hlo_text: str) -> tuple[float, int]:
  """2·|out|·|contracted| summed over the `dot` instructions of an HLO module (and their count).

  Operand shapes come from the instructions that define them (names are unique in a module).
  Dots inside loops would be counted once; the steps here have none (no grad accumulation).
  """
  dims = lambda s: [int(d) for d in s.split(",") if d]
  shapes = {name: dims(shape) for name, shape in _DEF.findall(hlo_text)}
  total, count = 0.0, 0
  for out, lhs, _, contracting in _DOT.findall(hlo_text):
    out_size = 1
    for d in dims(out):
      out_size *= d
    k = 1
    for c in dims(contracting):
      k *= shapes[lhs][c]
    total += 2.0 * out_size * k
    count += 1
  return total, count


def pretraining_heads_flops(cfg, seq_len: int, num_regions: int) -> float:
  """Forward GEMM FLOPs of the pretraining heads the official forward always runs (per row).

  The MLM head (transform H->H, decoder H->vocab) on every text position and the region-class
  head (transform V->V, decoder V->1601) on every region; no task's loss reads them, so the
  official backward skips them. Adds 1.70 G to a VQA example: the anchor's 68.6 = 66.86 + 1.70.
  """
  h, v = cfg.hidden_size, cfg.v_hidden_size
  return 2.0 * (seq_len * h * (h + cfg.vocab_size)
                + num_regions * v * (v + cfg.v_target_size))
