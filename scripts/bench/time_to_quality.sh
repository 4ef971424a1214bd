#!/usr/bin/env bash
# Time to quality: chargpt's default training run (baby preset, 2000 steps, all hardware threads), the
# same in bf16, and the PyTorch reference's same 2000 steps (scripts/reference/torch_gpt_ref.py) at its
# best setting, interleaved (chargpt default, chargpt bf16, PyTorch, chargpt default, ...) so that drift
# in the machine's speed hits all alike. Per run: the wall time and the exact val loss (`chargpt eval`'s
# definition, which the reference computes the same way after its training loop, untimed). Prints a
# markdown table (CPU, date, PyTorch version, commands), as scripts/bench/bench_table.py does.
#
# usage: scripts/bench/time_to_quality.sh [ROUNDS]        (default: 1)
# env:   CHARGPT       our binary (default: build/chargpt)
#        DATA          Tiny Shakespeare (default: data/tinyshakespeare.txt)
#        STEPS         training steps, both sides (default: 2000, chargpt's default)
#        THREADS       both sides' threads (default: every hardware thread, chargpt's default)
#        TORCH_PYTHON  the peer's Python (default: scripts/reference/torch_python.sh's, i.e. the
#                      current PyTorch scripts/setup_torch_peer.sh installs into .venv-torch)
#        TORCH_FLAGS   PyTorch's setting, e.g. "--bf16 --compile on". Unset: a short bench (PICK_STEPS
#                      timed steps, default 30, after 5 warmup) of fp32 / bf16 autocast x eager /
#                      torch.compile picks the fastest first (bf16 only where the CPU has AVX512-BF16
#                      or AMX, as bench_table.py)
#        MD_OUT, CSV_OUT  also write the table as markdown / CSV to these files
#        LOG_OUT       keep chargpt's (last) JSONL training log of the default run at this path
#
# chargpt's time is its training process's wall time (start-up, data, training with its loss estimates,
# saving); PyTorch's is its training loop's (with its loss estimates and the compile, without start-up
# and import). On 2 cores a round takes about 4 minutes (chargpt about 1 minute a run, PyTorch about 2);
# run it on an otherwise idle machine. OPENBLAS_NUM_THREADS=1 for both.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-1}
CHARGPT=${CHARGPT:-build/chargpt}
DATA=${DATA:-data/tinyshakespeare.txt}
STEPS=${STEPS:-2000}
THREADS=${THREADS:-$(nproc)}
PICK_STEPS=${PICK_STEPS:-30}
REF=scripts/reference/torch_gpt_ref.py
export OPENBLAS_NUM_THREADS=1

[ -x "$CHARGPT" ] || { echo "time_to_quality: no chargpt binary at '$CHARGPT' (scripts/build.sh, or set CHARGPT)" >&2; exit 1; }
[ -f "$DATA" ] || { echo "time_to_quality: no data at '$DATA' (scripts/fetch_data.sh, or set DATA)" >&2; exit 1; }
PY=$(scripts/reference/torch_python.sh)
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
now() { date +%s.%N; }
# field KEY... from one JSON object on stdin (the last line)
field() { python3 -c 'import json,sys; j = json.loads(sys.stdin.read().strip().splitlines()[-1]); print(*(j[k] for k in sys.argv[1:]))' "$@"; }
calc() { python3 -c "print($1)"; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(now)
echo "load average before: $load_before; $(nproc) hardware threads; PyTorch $TORCH_VERSION ($PY)"
if [ -z "${TORCH_FLAGS+set}" ]; then
  bf16s=(""); grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo && bf16s=("" --bf16)
  best=""
  for bf in "${bf16s[@]}"; do
    for c in off on; do
      flags="${bf:+$bf }--compile $c"
      # shellcheck disable=SC2086
      j=$("$PY" "$REF" bench --data "$DATA" --threads "$THREADS" --steps "$PICK_STEPS" --warmup 5 $flags 2>"$tmp/pick.err") ||
        { cat "$tmp/pick.err" >&2; exit 1; }
      read -r ms compiled < <(echo "$j" | field ms_per_step compiled)
      echo "PyTorch setting '$flags': $ms ms/step (compiled: $compiled)"
      [ "$c" = on ] && [ "$compiled" != True ] && continue  # it ran eager: the row above
      if [ -z "$best" ] || [ "$(calc "$ms < $best")" = True ]; then best=$ms; TORCH_FLAGS=$flags; fi
    done
  done
fi
echo "PyTorch runs with: --threads $THREADS $TORCH_FLAGS; chargpt at its defaults, and with --precision bf16"

# label|command for chargpt's runs (the default: no flags at all, whatever the build's default is)
ours=("default|" "bf16|--precision bf16")
results=$tmp/results
: >"$results"
skip_bf16=""
for ((r = 1; r <= ROUNDS; r++)); do
  for entry in "${ours[@]}"; do
    name=${entry%%|*}; flags=${entry#*|}
    [ "$name" = bf16 ] && [ -n "$skip_bf16" ] && continue
    t0=$(now)
    # shellcheck disable=SC2086
    if ! "$CHARGPT" train --data "$DATA" --steps "$STEPS" --threads "$THREADS" $flags --out "$tmp/ours.safetensors" \
        --log "$tmp/ours.jsonl" --force >"$tmp/ours.out" 2>&1; then
      if [ "$name" = bf16 ] && [ "$r" = 1 ]; then
        skip_bf16=$(grep -v '^\s*$' "$tmp/ours.out" | tail -1)
        echo "round $r chargpt bf16: skipped: $skip_bf16"
        continue
      fi
      cat "$tmp/ours.out" >&2; exit 1
    fi
    t1=$(now)
    setting=$(head -1 "$tmp/ours.out" | sed 's/.* threads, //')
    val=$("$CHARGPT" eval --data "$DATA" --checkpoint "$tmp/ours.safetensors" --threads "$THREADS" --json | field loss)
    wall=$(calc "f'{$t1 - $t0:.1f}'")
    echo "round $r chargpt $name ($setting): ${wall} s wall for $STEPS steps, val loss $(calc "f'{$val:.4f}'")"
    printf 'chargpt\t%s\t%s\t%s\t%s\n' "$name" "$setting" "$wall" "$val" >>"$results"
    [ "$name" = default ] && [ -n "${LOG_OUT:-}" ] && cp "$tmp/ours.jsonl" "$LOG_OUT"
  done

  # shellcheck disable=SC2086
  "$PY" "$REF" train --data "$DATA" --steps "$STEPS" --threads "$THREADS" $TORCH_FLAGS >"$tmp/theirs.json" \
    2>"$tmp/theirs.err" || { cat "$tmp/theirs.err" >&2; exit 1; }
  read -r loop val < <(field train_seconds val_loss <"$tmp/theirs.json")
  setting=$(python3 -c 'import json,sys; j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(("bf16 autocast" if j["bf16"] else "fp32") + ", torch.compile " + j.get("compile", "off"))' "$tmp/theirs.json")
  echo "round $r pytorch ($setting): ${loop} s training loop, val loss $val"
  printf 'pytorch\tbest\t%s\t%s\t%s\n' "$setting" "$loop" "$val" >>"$results"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(calc "f'{$(now) - $start:.0f}'")

CMD_OURS="$CHARGPT train --data $DATA --steps $STEPS --threads $THREADS [--precision bf16] --out W; $CHARGPT eval --data $DATA --checkpoint W"
CMD_THEIRS="${PY#"$PWD"/} $REF train --data $DATA --steps $STEPS --threads $THREADS $TORCH_FLAGS"
SKIP_BF16=$skip_bf16 python3 - "$results" <<EOF
import csv, datetime, os, statistics, sys
sys.path.insert(0, "scripts/bench")
from cpu_name import cpu_description
runs = {}
for line in open(sys.argv[1]):
    side, name, setting, s, v = line.rstrip("\n").split("\t")
    runs.setdefault((side, name), []).append((setting, float(s), float(v)))
if ("pytorch", "best") not in runs:
    sys.exit("time_to_quality: no PyTorch run finished")
best = statistics.median(s for _, s, _ in runs[("pytorch", "best")])
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
cpu = cpu_description(open("/proc/cpuinfo").read()) or "unknown CPU"
rounds = len(runs[("pytorch", "best")])
out = [f"**{cpu}**, {os.cpu_count()} hardware threads; {date}; $STEPS steps of the baby preset, both sides "
       f"at $THREADS threads; PyTorch $TORCH_VERSION; {rounds} interleaved round(s); load average before "
       f"$load_before, after $load_after; $elapsed s.", "",
       "\`scripts/bench/time_to_quality.sh $ROUNDS\`", "",
       "| side | setting | time to $STEPS steps, s, median (range) | exact val loss | PyTorch's time / this |",
       "|---|---|---|---|---|"]
rows = []
order = [("chargpt", "default"), ("chargpt", "bf16"), ("pytorch", "best")]
for side, name in order:
    if (side, name) not in runs:
        if name == "bf16" and os.environ.get("SKIP_BF16"):
            out.append(f"| chargpt | bf16 | skipped: {os.environ['SKIP_BF16']} | | |")
        continue
    xs = runs[(side, name)]
    ts = [s for _, s, _ in xs]
    m = statistics.median(ts)
    rng = f" ({min(ts):.1f}–{max(ts):.1f})" if len(ts) > 1 else ""
    label = f"{name}: {xs[-1][0]}" if side == "chargpt" else f"best: {xs[-1][0]}"
    ratio = f"{best / m:.2f}×"
    rows.append([side, label, f"{m:.1f}", f"{min(ts):.1f}", f"{max(ts):.1f}", len(ts), f"{xs[-1][2]:.4f}", f"{best / m:.3f}"])
    out.append(f"| {'chargpt' if side == 'chargpt' else 'PyTorch'} | {label} | {m:.1f}{rng} | {xs[-1][2]:.4f} | "
               f"{'**' + ratio + '**' if side == 'chargpt' else ratio} |")
out += ["", "chargpt: the training process's wall time; PyTorch: its training loop's (with the compile, "
        "without start-up). Val loss: the exact loss over the whole validation split (\`chargpt eval\`; "
        "the reference computes the same).", "", "Commands (per round):", "", "    $CMD_OURS", "    $CMD_THEIRS"]
text = "\n".join(out)
print(); print(text)
if os.environ.get("MD_OUT"):
    open(os.environ["MD_OUT"], "w").write(text + "\n")
if os.environ.get("CSV_OUT"):
    with open(os.environ["CSV_OUT"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", "cpu", "torch", "steps", "threads", "side", "setting", "seconds_median", "seconds_min",
                    "seconds_max", "rounds", "val_loss", "torch_best_over_this"])
        for r in rows:
            w.writerow([date, cpu, "$TORCH_VERSION", $STEPS, $THREADS] + r)
EOF
