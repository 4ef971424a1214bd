#!/usr/bin/env bash
# chargpt vs the PyTorch CPU peer on the baby model (L=4 H=4 C=128 T=64 B=12),
# interleaved: each round runs chargpt then PyTorch at every thread count, so
# machine drift lands on both alike. Each run reports the median of its own 30
# timed steps after 5 warmup steps; this script prints every run, then per
# thread count the median over rounds and the ratio PyTorch ms / chargpt ms
# (above 1 = chargpt is faster).
#
# usage: scripts/bench/bench_vs_torch.sh [ROUNDS] [THREADS...]      (default: 5 rounds, threads 1 2)
# env:   CHARGPT    our binary            (default: build/chargpt)
#        TORCH_PEER the peer script       (default: scripts/reference/torch_gpt_ref.py, in this repository)
#        DATA       Tiny Shakespeare      (default: data/tinyshakespeare.txt)
#        STEPS, WARMUP  timed and untimed steps per run (default: 30, 5)
#
# The peer is the project's PyTorch reference (same model, same recipe), run by
# the Python scripts/reference/torch_python.sh names (the current PyTorch that
# scripts/setup_torch_peer.sh installs; TORCH_PYTHON overrides it) with
# OPENBLAS_NUM_THREADS=1 and the reference's defaults: fused attention and AdamW,
# torch.compile where it compiles and is faster (TORCH_COMPILE=on|off|auto, default
# auto). TORCH_BF16=1 adds --bf16 (autocast).
# Both sides time one optimizer step on a sampled batch (chargpt's step also
# includes drawing the batch, a few microseconds); process start-up and data
# loading are not timed. Run it on an otherwise idle machine.
#
# BLAS kernels: chargpt switches OpenBLAS to its AVX-512 (SKYLAKEX) kernels on
# CPUs that Debian's OpenBLAS 0.3.21 misdetects; PyTorch's OpenBLAS makes its
# own choice. Export OPENBLAS_CORETYPE (e.g. SKYLAKEX) to give both the same.
set -euo pipefail

ROUNDS=${1:-5}
shift || true
THREADS=("$@")
[ ${#THREADS[@]} -gt 0 ] || THREADS=(1 2)
CHARGPT=${CHARGPT:-build/chargpt}
TORCH_PEER=${TORCH_PEER:-scripts/reference/torch_gpt_ref.py}
TORCH_FLAGS=(--compile "${TORCH_COMPILE:-auto}")
[ "${TORCH_BF16:-0}" = 1 ] && TORCH_FLAGS+=(--bf16)
DATA=${DATA:-data/tinyshakespeare.txt}
PY=python3  # parses the JSON
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-5}

[ -x "$CHARGPT" ] || { echo "bench_vs_torch: no chargpt binary at '$CHARGPT' (build it, or set CHARGPT)" >&2; exit 1; }
[ -f "$TORCH_PEER" ] || { echo "bench_vs_torch: no PyTorch peer at '$TORCH_PEER' (set TORCH_PEER)" >&2; exit 1; }
[ -f "$DATA" ] || { echo "bench_vs_torch: no data file at '$DATA' (set DATA)" >&2; exit 1; }
TORCH_PY=$("$(dirname "$0")/../reference/torch_python.sh")

# fields NAME... (space-separated) from the last line of JSON on stdin
field() { "$PY" -c 'import json,sys; j = json.loads(sys.stdin.read().strip().splitlines()[-1]); print(*(j[k] for k in sys.argv[1:]))' "$@"; }

results=$(mktemp)
errs=$(mktemp)
trap 'rm -f "$results" "$errs"' EXIT
# run a command, its stdout into $out; on failure show its stderr and stop
run() { if ! out=$("$@" 2>"$errs"); then echo "bench_vs_torch: failed: $*" >&2; cat "$errs" >&2; exit 1; fi; }
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)};" \
  "PyTorch $("$TORCH_PY" -c 'import torch; print(torch.__version__)') ($TORCH_PY ${TORCH_FLAGS[*]})"
printf '%-6s %-8s %-8s %10s %10s %8s\n' round side threads ms/step loss others
for ((r = 1; r <= ROUNDS; r++)); do
  for n in "${THREADS[@]}"; do
    run "$CHARGPT" bench --data "$DATA" --preset baby --threads "$n" --steps $STEPS --warmup $WARMUP \
      --rounds 1 --sgemm-size 256 --json -q
    ours=$out
    # one parse of our JSON: kernels, ms/step, loss, others' CPU share ("?" where /proc/stat was unreadable)
    read -r blas ms loss others < <(echo "$ours" | "$PY" -c 'import json,sys
j = json.load(sys.stdin); r = j["rows"][0]; o = r["other_cpu_frac"]
print(j["method"]["blas_core"], "%.3f" % r["ms_median"], "%.4f" % r["loss_last"], "?" if o < 0 else "%.0f%%" % (100 * o))')
    if [ -z "${core:-}" ]; then
      core=$blas
      echo "chargpt's OpenBLAS kernels: $core"
    fi
    printf '%-6s %-8s %-8s %10s %10s %8s\n' "$r" chargpt "$n" "$ms" "$loss" "$others"
    echo "chargpt $n $ms" >>"$results"

    run env OPENBLAS_NUM_THREADS=1 "$TORCH_PY" "$TORCH_PEER" bench --data "$DATA" --threads "$n" \
      -L 4 -H 4 -C 128 -T 64 -B 12 --steps $STEPS --warmup $WARMUP ${TORCH_FLAGS[@]+"${TORCH_FLAGS[@]}"}
    theirs=$out
    read -r ms loss < <(echo "$theirs" | field ms_per_step loss)
    printf '%-6s %-8s %-8s %10s %10s\n' "$r" pytorch "$n" "$ms" "$loss"
    echo "pytorch $n $ms" >>"$results"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
"$PY" - "$results" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    side, n, ms = line.split()
    runs.setdefault((side, int(n)), []).append(float(ms))
print(f"{'threads':>7} {'chargpt ms (median, range)':>28} {'pytorch ms (median, range)':>28} {'pytorch/chargpt':>16}")
for n in sorted({n for _, n in runs}):
    c, p = runs[("chargpt", n)], runs[("pytorch", n)]
    mc, mp = statistics.median(c), statistics.median(p)
    print(f"{n:>7} {f'{mc:.2f} ({min(c):.2f}-{max(c):.2f})':>28} {f'{mp:.2f} ({min(p):.2f}-{max(p):.2f})':>28}"
          f" {mp / mc:>15.2f}x")
print(f"medians over {len(c)} rounds of one run each; each run's value is the median of its own steps."
      " Ratio above 1: chargpt is faster.")
print("others: CPU other processes took while chargpt's steps ran (share of the machine), a check on the conditions.")
EOF
