#!/usr/bin/env bash
# The accelerator measurement (BENCHMARKS.md, "Accelerators"): the base
# VQA training step and its inference in bfloat16 at batches that fill an H200, with MFU
# against 790 TFLOP/s, the bf16 matmul rate measured on such a machine.
#
#     bash benchmarks/accelerator_mfu.sh                 # on the GPU machine, from the repo root
#     BATCHES="256" ATTENTION="einsum" bash benchmarks/accelerator_mfu.sh
#     BATCHES=2 CONFIG=tiny ATTENTION=einsum MATMUL_SIZE=256 REPEATS=1 \
#       bash benchmarks/accelerator_mfu.sh                # a CPU dry run of the script
#
# It needs jax (with its GPU plugin), flax, optax, absl, etils and rich, which the lent
# machine's image has, and no install: the repo goes on PYTHONPATH. Every log and the JSON
# figures go to $OUT (the device tool's folder that comes back; /tmp/accelerator_mfu here):
# one log and one JSON per measurement.
# Each measurement is its own process, so one that runs out of memory does not stop the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/accelerator_mfu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
BATCHES="${BATCHES:-256 512}"
ATTENTION="${ATTENTION:-einsum dot_product_attention}"
CONFIG="${CONFIG:-base}"
PEAK_TFLOPS="${PEAK_TFLOPS:-790}"
REPEATS="${REPEATS:-5}"
MATMUL_SIZE="${MATMUL_SIZE:-8192}"

# One log and one JSON per measurement: the device tool brings back at most 8 files.
LOG="$OUT/accelerator_mfu.log"
{ date -u; uname -m; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    2>/dev/null || echo "no nvidia-smi"; } | tee "$LOG"
"$PY" -c "import jax, flax, optax
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" \
    2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

status=0
for attention in $ATTENTION; do
  for batch in $BATCHES; do
    name="${CONFIG}_b${batch}_${attention}"
    echo "=== $name" | tee -a "$LOG"
    # Training at `batch`, then inference at the same batch, bfloat16 compute (parameters and
    # the optimizer stay float32); the matmul reference at 8192^3 by default, a size that fills the chip.
    "$PY" benchmarks/train_step.py --config="$CONFIG" --dtype=bfloat16 --tasks=vqa \
        --batch_sizes="$batch" --inference="$batch" --repeats="$REPEATS" \
        --attention_impl="$attention" --peak_tflops="$PEAK_TFLOPS" --matmul_size="$MATMUL_SIZE" \
        --matmul_repeats=5 --json_out="$OUT/$name.json" 2>&1 | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  done
done
exit "$status"
