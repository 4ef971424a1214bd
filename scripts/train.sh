#!/usr/bin/env bash
# Quick start: set up (packages, build, data) and train on Tiny Shakespeare.
# Arguments go to `chargpt train` (defaults: baby preset, 2000 steps,
# checkpoints/shakespeare.safetensors), then the exact val loss is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
scripts/fetch_data.sh
build/chargpt train --log checkpoints/train_log.jsonl "$@"
out=checkpoints/shakespeare.safetensors
prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out="$a"; case "$a" in --out=*) out="${a#--out=}";; esac; prev="$a"; done
build/chargpt eval --checkpoint "$out"
