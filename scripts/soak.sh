#!/usr/bin/env bash
# Soak test of train's failure behaviour (not in CI). For MINUTES (default 30), over every backend
# and precision this build and machine can run: an uninterrupted reference run, then the same run
# as cycles of train/--resume, each stopped at a random moment by a random signal (kill -9, TERM,
# INT or HUP); after every cycle an eval of the checkpoint runs concurrently with the next cycle;
# now and then a second train on the same checkpoint starts while a cycle runs and must be refused
# by the lock. When a run reaches its last step, its weights and optimizer state must equal the
# reference's bit for bit. The schedule (configurations, signals, delays) is fixed by SEED; what
# the signals hit depends on timing. Prints the counts; exits 1 on any failure (work dir kept).
# Usage: scripts/soak.sh [MINUTES] [SEED]
set -uo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
seed=${2:-1}
bin=$PWD/build/chargpt
[ -x "$bin" ] || { echo "soak.sh: build/chargpt is missing (scripts/build.sh)" >&2; exit 2; }
RANDOM=$seed
work=$(mktemp -d /tmp/chargpt-soak.XXXXXX)
data=$work/text.txt
if [ -f data/tinyshakespeare.txt ]; then head -c 300000 data/tinyshakespeare.txt >"$data"
else for i in $(seq 20000); do echo "to be or not to be that is the question $i"; done >"$data"; fi
steps=600
model=(--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-interval 60 --eval-iters 2
       --warmup 20 --threads 2 --log-interval 5 --data "$data")

# The configurations this build and CPU run (a 1-step probe each).
configs=()
for c in "openblas fp32" "onednn fp32" "onednn bf16" "cuda fp32" "cuda bf16"; do
  set -- $c
  if "$bin" train "${model[@]}" --steps 1 --backend "$1" --precision "$2" --out "$work/probe.safetensors" \
       --force >/dev/null 2>&1; then configs+=("$c"); fi
done
echo "soak.sh: ${minutes} min, seed $seed, configurations: ${configs[*]/%/;} work dir $work"

declare -A n=()
count() { n[$1]=$(( ${n[$1]:-0} + 1 )); }
fail() { echo "FAIL: $*" >&2; count failures; }
sig_names=(KILL TERM INT HUP)
sig_codes=(137 143 130 129)
end=$(( $(date +%s) + minutes * 60 ))
eval_pid=
run=0
while [ "$(date +%s)" -lt "$end" ]; do
  run=$((run + 1))
  set -- ${configs[$((RANDOM % ${#configs[@]}))]}
  backend=(--backend "$1" --precision "$2")
  save_every=$((1 + RANDOM % 8))
  ref=$work/ref.safetensors out=$work/run.safetensors log=$work/run.jsonl
  rm -f "$work"/ref.* "$work"/run.*
  flags=("${model[@]}" "${backend[@]}" --steps $steps --save-interval $save_every)
  if ! "$bin" train "${flags[@]}" --out "$ref" >"$work/ref.txt" 2>&1; then fail "reference run $run ($*)"; break; fi
  count runs
  cycles=0
  while :; do
    [ "$(date +%s)" -lt "$end" ] || break
    mode=(--force)
    [ -f "$out" ] && mode=(--resume)
    "$bin" train "${flags[@]}" "${mode[@]}" --out "$out" --log "$log" >"$work/cycle.txt" 2>&1 &
    pid=$!
    cycles=$((cycles + 1)); count cycles
    [ "${mode[0]}" = --resume ] && count resumes
    # The eval of the last cycle's checkpoint, concurrently with this cycle.
    if [ -n "$eval_pid" ]; then
      if wait "$eval_pid"; then count evals_ok; else fail "eval during cycle $cycles of run $run: $(tail -n1 "$work/eval.txt")"; fi
      eval_pid=
    fi
    if [ -f "$out" ]; then "$bin" eval --checkpoint "$out" --data "$data" --threads 1 >"$work/eval.txt" 2>&1 & eval_pid=$!; fi
    delay_ms=$((RANDOM % 3000))
    if [ $((RANDOM % 5)) -eq 0 ]; then  # a second train on the same checkpoint while this one runs
      sleep 0.3
      if kill -0 "$pid" 2>/dev/null && grep -q '"step"' "$log" 2>/dev/null; then
        "$bin" train "${flags[@]}" --resume --out "$out" >"$work/second.txt" 2>&1
        rc=$?
        if [ $rc -eq 1 ] && grep -q "is in use by another chargpt train (pid $pid," "$work/second.txt"; then count second_refused
        elif kill -0 "$pid" 2>/dev/null; then fail "a second train ran beside pid $pid (exit $rc): $(tail -n1 "$work/second.txt")"
        else count second_inconclusive; fi  # the first had ended meanwhile
      fi
    fi
    s=$((RANDOM % 4))
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    if kill -0 "$pid" 2>/dev/null; then kill -"${sig_names[$s]}" "$pid" 2>/dev/null && count "sent_${sig_names[$s]}"; fi
    wait "$pid" 2>/dev/null; rc=$?
    case $rc in
      0) count exit_0 ;;
      "${sig_codes[$s]}") count "exit_${rc}" ;;
      *) fail "cycle $cycles of run $run ($*): exit $rc after SIG${sig_names[$s]}: $(tail -n2 "$work/cycle.txt" | tr '\n' ' ')" ;;
    esac
    if [ $rc -eq 0 ]; then
      if cmp -s "$ref" "$out" && cmp -s "${ref%.safetensors}.optim.safetensors" "${out%.safetensors}.optim.safetensors"
      then count runs_identical; else fail "run $run ($*): weights after $cycles cycles differ from the uninterrupted run's"; fi
      break
    fi
  done
done
[ -n "$eval_pid" ] && { if wait "$eval_pid"; then count evals_ok; else fail "the last eval"; fi; }
echo "soak.sh: counts after ${minutes} min (seed $seed):"
for k in $(printf '%s\n' "${!n[@]}" | sort); do printf '  %-20s %d\n' "$k" "${n[$k]}"; done
if [ "${n[failures]:-0}" -gt 0 ]; then echo "soak.sh: ${n[failures]} failures; work dir kept: $work" >&2; exit 1; fi
rm -rf "$work"
echo "soak.sh: no failures"
