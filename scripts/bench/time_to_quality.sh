#!/usr/bin/env bash
# Time to quality: chargpt's default training run (baby preset, 2000 steps, all
# cores) against the PyTorch reference's same 2000 steps (scripts/reference/torch_gpt_ref.py),
# each at its best setting, interleaved (chargpt, PyTorch, chargpt, ...) so that
# drift in the machine's speed hits both alike. Per run: the wall time of the
# training process and the exact val loss (`chargpt eval`'s definition, which the
# reference computes the same way after its training loop, untimed).
#
# usage: scripts/bench/time_to_quality.sh [ROUNDS]        (default: 1)
# env:   CHARGPT        our binary (default: build/chargpt)
#        DATA           Tiny Shakespeare (default: data/tinyshakespeare.txt)
#        TORCH_THREADS  PyTorch's thread count; TORCH_BF16=0|1 its autocast. Unset: a
#                       short bench of threads 1..nproc (at most 2) x fp32/bf16 picks the
#                       fastest setting first.
#        LOG_OUT        keep chargpt's (last) JSONL training log at this path
#
# PyTorch: Debian's package for /usr/bin/python3: sudo apt-get install -y python3-torch.
# It runs with OPENBLAS_NUM_THREADS=1 (its best setting: OpenBLAS threads on top of
# torch's oversubscribe the cores). Takes ~5 minutes a round on 2 cores; run it on
# an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-1}
CHARGPT=${CHARGPT:-build/chargpt}
DATA=${DATA:-data/tinyshakespeare.txt}
PY=/usr/bin/python3
REF=scripts/reference/torch_gpt_ref.py
export OPENBLAS_NUM_THREADS=1

[ -x "$CHARGPT" ] || { echo "time_to_quality: no chargpt binary at '$CHARGPT' (scripts/build.sh, or set CHARGPT)" >&2; exit 1; }
[ -f "$DATA" ] || { echo "time_to_quality: no data at '$DATA' (scripts/fetch_data.sh, or set DATA)" >&2; exit 1; }
"$PY" -c 'import torch' 2>/dev/null || { echo "time_to_quality: $PY cannot import torch (sudo apt-get install -y python3-torch)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
now() { date +%s.%N; }
# field KEY... from one JSON object on stdin (the last line)
field() { "$PY" -c 'import json,sys; j = json.loads(sys.stdin.read().strip().splitlines()[-1]); print(*(j[k] for k in sys.argv[1:]))' "$@"; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}"
if [ -z "${TORCH_THREADS:-}" ]; then
  max=$(nproc); [ "$max" -gt 2 ] && max=2
  best=""
  for n in $(seq 1 "$max"); do
    for bf in 0 1; do
      flags=(); [ $bf = 1 ] && flags=(--bf16)
      ms=$("$PY" "$REF" bench --data "$DATA" --threads "$n" --steps 30 --warmup 5 ${flags[@]+"${flags[@]}"} | field ms_per_step)
      echo "PyTorch setting: threads $n, bf16 $bf: $ms ms/step"
      if [ -z "$best" ] || "$PY" -c "import sys; sys.exit(0 if $ms < $best else 1)"; then
        best=$ms; TORCH_THREADS=$n; TORCH_BF16=$bf
      fi
    done
  done
fi
TORCH_BF16=${TORCH_BF16:-0}
tflags=(--threads "$TORCH_THREADS"); [ "$TORCH_BF16" = 1 ] && tflags+=(--bf16)
echo "PyTorch runs at threads $TORCH_THREADS, bf16 $TORCH_BF16; chargpt at its defaults (all cores)"

results=$tmp/results
for ((r = 1; r <= ROUNDS; r++)); do
  t0=$(now)
  "$CHARGPT" train --data "$DATA" --out "$tmp/ours.safetensors" --log "$tmp/ours.jsonl" >"$tmp/ours.out" 2>&1 ||
    { cat "$tmp/ours.out" >&2; exit 1; }
  t1=$(now)
  val=$("$CHARGPT" eval --data "$DATA" --checkpoint "$tmp/ours.safetensors" --json | field loss)
  val=$("$PY" -c "print(f'{$val:.4f}')")
  wall=$("$PY" -c "print(f'{$t1 - $t0:.1f}')")
  echo "round $r chargpt: ${wall} s wall for 2000 steps, val loss $val"
  echo "chargpt $wall $val" >>"$results"
  [ -n "${LOG_OUT:-}" ] && cp "$tmp/ours.jsonl" "$LOG_OUT"

  t0=$(now)
  "$PY" "$REF" train --data "$DATA" --steps 2000 "${tflags[@]}" >"$tmp/theirs.json" 2>"$tmp/theirs.err" ||
    { cat "$tmp/theirs.err" >&2; exit 1; }
  t1=$(now)
  read -r loop val < <(field train_seconds val_loss <"$tmp/theirs.json")
  wall=$("$PY" -c "print(f'{$t1 - $t0:.1f}')")
  echo "round $r pytorch: ${wall} s wall (training loop $loop s, then its exact val loss, untimed in the loop), val loss $val"
  echo "pytorch $loop $val" >>"$results"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$results" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    side, s, v = line.split()
    runs.setdefault(side, []).append((float(s), float(v)))
c = statistics.median(s for s, _ in runs["chargpt"])
p = statistics.median(s for s, _ in runs["pytorch"])
print(f"chargpt: {c:.1f} s (training process), val loss {runs['chargpt'][-1][1]:.4f}")
print(f"pytorch: {p:.1f} s (training loop), val loss {runs['pytorch'][-1][1]:.4f}")
print(f"chargpt takes {100 * c / p:.0f}% of PyTorch's time ({p / c:.2f}x faster); medians over {len(runs['chargpt'])} round(s)")
EOF
