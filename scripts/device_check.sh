#!/usr/bin/env bash
# chargpt on the lent GPU machine (one NVIDIA H200, 16 cores, CUDA 13, no Debian packages of
# ours, no network): from the travelled tree alone, unpack the carried Debian packages into
# build-device/prefix, build with CUDA, run the test suite and the measurements, and write
# summary.md plus raw outputs (at most 8 files) to $OUT, or to DIR when $OUT is unset.
#
# Before the run, here: scripts/device_pack.sh --download --prebuild  (fills .carry/: the
# .debs, the dataset and a portable prebuilt chargpt to fall back on; ~26 MiB in all).
# The run call (the whole script stops itself after --budget seconds, 340 by default):
#   command:   bash scripts/device_check.sh
#   carry:     [".carry"]
#   timeout_s: 420
# A second, short run redoes only what failed, e.g.:
#   bash scripts/device_check.sh --stages build,ctest,nanogpt_gpu
#
# usage: scripts/device_check.sh [DIR] [--stages a,b,c] [--cpu-only] [--threads 1,2,4,8,16]
#                                [--budget SECONDS] [--prebuilt]
#   --stages    run only these (always: unpack and the summary). Stages, in order:
#               system build info ctest baby_loss nanogpt_gpu cuda_switches peer_gpu nanogpt_cpu baby_cpu
#               nanogpt_bf16 peer_cpu (GPU stages: baby_loss nanogpt_gpu peer_gpu; a later
#               stage that needs the binaries finds the build of an earlier run)
#   --cpu-only  skip the GPU stages. Without it, a machine with no working nvidia-smi runs
#               nothing and exits 0 saying "no GPU here: skipped"
#   --threads   the CPU thread counts of the sweeps (default 1,2,4,8,16, capped at nproc)
#   --budget    seconds for the whole script; a stage gets at most what is left, and one
#               with under 20 s left is skipped and says so
#   --prebuilt  use .carry/prebuilt instead of building (also the fallback when the build fails)
# Every stage runs under `timeout`; a failure is recorded in summary.md and the script goes on.
# DEVICE_CHECK_LIMIT_SCALE=N multiplies the stages' own limits (a slow machine's rehearsal).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRIPTS=$ROOT/scripts
# shellcheck source=scripts/device_prefix.sh
. "$SCRIPTS/device_prefix.sh"

ALL_STAGES=(system build info ctest baby_loss nanogpt_gpu cuda_switches peer_gpu nanogpt_cpu baby_cpu nanogpt_bf16 peer_cpu)
GPU_STAGES=" baby_loss nanogpt_gpu cuda_switches peer_gpu "
# Each stage's own limit in seconds (16 cores; estimates from a 2-core run scaled, x2-3 slack).
declare -A LIMIT=([system]=30 [build]=200 [info]=20 [ctest]=120 [baby_loss]=90 [nanogpt_gpu]=75 [cuda_switches]=75
  [peer_gpu]=90 [nanogpt_cpu]=120 [baby_cpu]=45 [peer_cpu]=90 [nanogpt_bf16]=90)

stages_arg="" cpu_only=0 threads_arg="1,2,4,8,16" budget=340 force_prebuilt=0 dir_arg=""
while [ $# -gt 0 ]; do
  case "$1" in
    --stages) stages_arg=${2:?--stages needs a list}; shift 2 ;;
    --stages=*) stages_arg=${1#*=}; shift ;;
    --cpu-only) cpu_only=1; shift ;;
    --threads) threads_arg=${2:?--threads needs a list}; shift 2 ;;
    --threads=*) threads_arg=${1#*=}; shift ;;
    --budget) budget=${2:?--budget needs seconds}; shift 2 ;;
    --budget=*) budget=${1#*=}; shift ;;
    --prebuilt) force_prebuilt=1; shift ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    -*) echo "device_check: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) dir_arg=$1; shift ;;
  esac
done
[[ "$budget" =~ ^[0-9]+$ ]] || { echo "device_check: --budget '$budget': expected whole seconds" >&2; exit 2; }
SELECTED=("${ALL_STAGES[@]}")
if [ -n "$stages_arg" ]; then
  IFS=, read -r -a SELECTED <<< "$stages_arg"
  for s in "${SELECTED[@]}"; do
    [[ " ${ALL_STAGES[*]} " == *" $s "* ]] || { echo "device_check: unknown stage '$s' (stages: ${ALL_STAGES[*]})" >&2; exit 2; }
  done
fi

T0=$(date +%s)
OUTDIR=${OUT:-${dir_arg:-$ROOT/build-device/out}}
# ---- GPU or not ---------------------------------------------------------------------------------
HAVE_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then HAVE_GPU=1; fi
if [ "$HAVE_GPU" = 0 ] && [ "$cpu_only" = 0 ]; then
  echo "device_check: no GPU here: skipped (no working nvidia-smi; --cpu-only runs the CPU stages)"
  mkdir -p "$OUTDIR" || exit 1
  printf '# chargpt device check\n\nno GPU here: skipped (no working nvidia-smi on %s; `--cpu-only` runs the CPU stages)\n' "$(hostname)" > "$OUTDIR/summary.md"
  exit 0
fi

W=$ROOT/build-device            # prefix, build, raw results: ignored (/build*/), never carried
RES=$W/res
mkdir -p "$OUTDIR" "$RES" "$W/tmp" || exit 1
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/log.txt
STAGES_TSV=$RES/stages.tsv
# The rows of an earlier run (a warm machine's) for the stages this run does not redo stay.
if [ -f "$STAGES_TSV" ]; then
  awk -F'\t' -v redo=" ${SELECTED[*]} unpack fallback total " 'index(redo, " " $1 " ") == 0 {
    if ($4 !~ /^earlier run/) $4 = "earlier run" ($4 == "" ? "" : ": " $4); print $1 "\t" $2 "\t" $3 "\t" $4 }' \
    "$STAGES_TSV" > "$STAGES_TSV.keep"
  mv "$STAGES_TSV.keep" "$STAGES_TSV"
fi
NPROC=$(nproc)
JOBS=$NPROC
NTHREADS=$(( NPROC < 16 ? NPROC : 16 ))   # the single-count runs (GPU, peer, loss curves)
THREADS=""
IFS=, read -r -a tl <<< "$threads_arg"
for t in "${tl[@]}"; do
  [[ "$t" =~ ^[0-9]+$ ]] && [ "$t" -ge 1 ] || { echo "device_check: --threads '$threads_arg': expected a comma list of counts" >&2; exit 2; }
  [ "$t" -le "$NPROC" ] && THREADS=${THREADS:+$THREADS,}$t
done
[ -n "$THREADS" ] || THREADS=1
# The GPU machine's image keeps cmake, ninja and PyTorch's python3 in a virtual environment and
# nvcc in the toolkit's folder: both go on PATH (after what is there) in case they are not yet.
for d in /opt/torch/.venv/bin /usr/local/cuda/bin; do
  [ -d "$d" ] && [[ ":$PATH:" != *":$d:"* ]] && PATH=$PATH:$d
done
export PATH
PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch' 2>/dev/null && [ -x /opt/torch/.venv/bin/python3 ]; then PY=/opt/torch/.venv/bin/python3; fi
# The PyTorch peer, wherever the scripts' regrouping put it.
PEER=""
for cand in "$SCRIPTS/torch_gpt_ref.py" "$SCRIPTS/reference/torch_gpt_ref.py"; do
  [ -f "$cand" ] && { PEER=$cand; break; }
done
NANOGPT_PEER=(-L 6 -H 6 -C 384 -T 256 -B 64)   # chargpt's nanogpt preset (src/train/train.h)

say() { echo "device_check: $*" | tee -a "$LOG"; }
elapsed() { echo $(( $(date +%s) - T0 )); }
{ echo "device_check on $(hostname) at $(date -u +%FT%TZ): stages ${SELECTED[*]}; cpu_only=$cpu_only threads=$THREADS budget=${budget}s"; } > "$LOG"

# ---- The prefix (always: every stage needs its environment) -------------------------------------
PREFIX=$W/prefix
if ! prefix_unpack "$ROOT/.carry/debs" "$PREFIX" >> "$LOG" 2>&1; then
  say "unpack: FAILED: the carried packages are missing or broken (see log.txt); nothing can run"
  printf 'unpack\tFAILED\t%s\tno usable .carry/debs\n' "$(elapsed)" >> "$STAGES_TSV"
  "$PY" "$SCRIPTS/device_summary.py" "$RES" "$OUTDIR" || true
  exit 1
fi
prefix_env "$PREFIX"
printf 'unpack\tok\t%s\t%s\n' "$(elapsed)" "$(du -sh "$PREFIX" | cut -f1) in build-device/prefix" >> "$STAGES_TSV"

# cuBLAS and the CUDA runtime for the loader: the toolkit's folder, else the ones PyTorch's wheels carry.
cuda_lib_dirs() {
  local d found=0
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -e "$d/libcublas.so.13" ] && { echo "$d"; found=1; break; }
  done
  ldconfig -p 2>/dev/null | grep -q 'libcublas.so.13 ' && found=1
  if [ "$found" = 0 ]; then
    "$PY" - <<'EOF' 2>/dev/null
import glob, os, site
for base in site.getsitepackages():
    for name in ("libcublas.so.13", "libcudart.so.13", "libcublasLt.so.13"):
        for f in glob.glob(os.path.join(base, "nvidia", "**", name), recursive=True):
            print(os.path.dirname(f))
EOF
  fi
}
for d in $(cuda_lib_dirs | sort -u); do LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d; done
export LD_LIBRARY_PATH
export OPENBLAS_NUM_THREADS=1      # our tasks call BLAS; the peer sets the same

# The prebuilt binaries (device_pack.sh --prebuild) were compiled with these two paths in them
# (the tests' data file, the chargpt binary): links make them point into this tree.
PREBUILT_SRC=/tmp/chargpt-prebuilt/src
PREBUILT_BIN=/tmp/chargpt-prebuilt/build
use_prebuilt() {
  [ -x "$ROOT/.carry/prebuilt/chargpt" ] || { echo "no .carry/prebuilt/chargpt to fall back on"; return 1; }
  mkdir -p /tmp/chargpt-prebuilt && ln -sfn "$ROOT" "$PREBUILT_SRC" && ln -sfn "$ROOT/.carry/prebuilt" "$PREBUILT_BIN" || return 1
  echo "$PREBUILT_BIN" > "$W/bindir"
}
BUILD=$W/build
bindir() { cat "$W/bindir" 2>/dev/null || echo "$BUILD"; }

# The dataset: carried in .carry/data when the checkout's data/ is ignored.
if [ ! -f data/tinyshakespeare.txt ] && [ -f .carry/data/tinyshakespeare.txt ]; then
  mkdir -p data && cp .carry/data/tinyshakespeare.txt data/
fi
[ -f data/tinyshakespeare.txt ] || say "no data/tinyshakespeare.txt (nor .carry/data): the tests that train and every run will fail"

# ---- Stages ---------------------------------------------------------------------------------------
stage_system() {
  {
    echo "== uname"; uname -a
    echo "== nproc"; nproc
    echo "== memory"; free -g
    echo "== lscpu"; lscpu
    echo "== cpu flags"; grep -m1 '^flags' /proc/cpuinfo
    echo "== nvidia-smi"; nvidia-smi
    echo "== nvidia-smi query"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm,clocks.max.mem,power.limit --format=csv
    echo "== g++"; g++ --version 2>&1 | head -1
    echo "== nvcc"; { command -v nvcc || ls /usr/local/cuda/bin/nvcc; } 2>&1; { nvcc --version || /usr/local/cuda/bin/nvcc --version; } 2>&1 | tail -2
    echo "== cmake"; command -v cmake; cmake --version | head -1
    echo "== ninja"; ninja --version 2>&1
    echo "== python"; command -v "$PY"
    "$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name())' 2>&1
    echo "== LD_LIBRARY_PATH"; echo "$LD_LIBRARY_PATH"
  } > "$RES/system.txt" 2>&1
  cat "$RES/system.txt"
  return 0
}

stage_build() {
  if [ "$force_prebuilt" = 1 ]; then echo "--prebuilt: not building"; return 3; fi
  rm -f "$W/bindir"
  local cuda=AUTO gen=() launcher=()
  [ "$HAVE_GPU" = 1 ] && cuda=ON
  command -v ninja >/dev/null && gen=(-G Ninja)
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  # A build folder of another generator cannot be reused.
  if [ -f "$BUILD/CMakeCache.txt" ] && ! grep -q "CMAKE_GENERATOR:INTERNAL=${gen[1]:-Unix Makefiles}" "$BUILD/CMakeCache.txt"; then rm -rf "$BUILD"; fi
  command -v g++ >/dev/null || command -v c++ >/dev/null || { echo "no host C++ compiler (g++/c++)"; return 3; }
  cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCHARGPT_CUDA=$cuda -DCHARGPT_MPI=OFF "${PREFIX_CMAKE_ARGS[@]}" || return 1
  cmake --build "$BUILD" -j"$JOBS" || return 1
  rm -f "$W/bindir"
  return 0
}

stage_info() {
  local b; b=$(bindir)
  {
    echo "== binaries: $b"
    "$b/chargpt" info
    echo "== ldd chargpt"; ldd "$b/chargpt"
    [ -f "$b/libchargpt_cuda.so" ] && { echo "== ldd libchargpt_cuda.so"; ldd "$b/libchargpt_cuda.so"; }
  } > "$RES/info.txt" 2>&1
  local rc=$?
  cat "$RES/info.txt"
  grep -q '^chargpt ' "$RES/info.txt" && return 0
  return "$rc"
}

stage_ctest() {
  local b; b=$(bindir)
  if [ -f "$b/CTestTestfile.cmake" ]; then
    ctest --test-dir "$b" -j"$JOBS" --timeout 100 --output-on-failure --output-junit "$RES/ctest.xml" 2>&1 | tee "$RES/ctest.txt"
    return "${PIPESTATUS[0]}"
  fi
  # The prebuilt tests have no CTest files: doctest's own runner, JUnit from it.
  echo "prebuilt: running $b/chargpt_tests directly (no CTest here)"
  (cd "$b" && ./chargpt_tests --reporters=junit --out="$RES/ctest.xml" --no-version; echo "doctest exit $?") > "$RES/ctest.txt" 2>&1
  "$b/chargpt_tests" --test-case='*cuda*' 2>&1 | tee -a "$RES/ctest.txt"
  grep -q 'doctest exit 0' "$RES/ctest.txt"
}

train_run() {  # train_run LABEL [flags...]: baby, 200 steps, loss every 50
  local label=$1; shift
  "$(bindir)/chargpt" train --preset baby --steps 200 --eval-interval 50 --log-interval 50 --seed 1337 \
    --threads "$NTHREADS" --log "$RES/train_$label.jsonl" --out "$W/tmp/$label.safetensors" --force "$@"
}
stage_baby_loss() {
  local rc=0
  train_run cpu || rc=$?
  train_run cuda --backend cuda || rc=$?
  return "$rc"
}

bench_run() {  # bench_run LABEL [flags...]: chargpt bench, CSV and JSON into $RES
  local label=$1; shift
  rm -f "$RES/bench_$label.csv"
  "$(bindir)/chargpt" bench -q --csv "$RES/bench_$label.csv" --json "$@" > "$RES/bench_$label.json"
}
stage_nanogpt_gpu() {
  local rc=0
  bench_run nanogpt_cuda --preset nanogpt --backend cuda --threads "$NTHREADS" --steps 10 --warmup 2 --rounds 1 || rc=$?
  bench_run nanogpt_cuda_tf32 --preset nanogpt --backend cuda --tf32 --threads "$NTHREADS" --steps 10 --warmup 2 --rounds 1 || rc=$?
  bench_run nanogpt_cuda_bf16 --preset nanogpt --backend cuda --precision bf16 --threads "$NTHREADS" --steps 10 --warmup 2 --rounds 1 || rc=$?
  bench_run baby_cuda --preset baby --backend cuda --threads "$NTHREADS" --steps 20 --warmup 3 --rounds 1 || rc=$?
  return "$rc"
}
stage_cuda_switches() {  # what each CUDA switch gains: the nanogpt step with each one off
  local rc=0 a=(--preset nanogpt --backend cuda --threads "$NTHREADS" --steps 10 --warmup 2 --rounds 1)
  CHARGPT_CUDA_INPUT_CACHE=0 CHARGPT_CUDA_CHUNK_KB=0 bench_run nanogpt_cuda_plain "${a[@]}" || rc=$?
  CHARGPT_CUDA_INPUT_CACHE=0 bench_run nanogpt_cuda_nocache "${a[@]}" || rc=$?
  CHARGPT_CUDA_CHUNK_KB=0 bench_run nanogpt_cuda_nochunk "${a[@]}" || rc=$?
  CHARGPT_CUDA_TIMERS=0 bench_run nanogpt_cuda_notimers "${a[@]}" || rc=$?
  bench_run nanogpt_cuda_defaults "${a[@]}" || rc=$?
  CHARGPT_CUDA_INPUT_CACHE=0 CHARGPT_CUDA_CHUNK_KB=0 bench_run nanogpt_cuda_plain_1thread "${a[@]}" --threads 1 || rc=$?
  bench_run nanogpt_cuda_defaults_1thread "${a[@]}" --threads 1 || rc=$?
  return "$rc"
}
sweep_run() {  # sweep_run LABEL [flags...]: one bench per thread count, the most threads first,
  # so that a stage stopped by its time limit keeps the counts it finished (1 thread takes longest)
  local label=$1 t rc=0; shift
  for t in $(tr ',' '\n' <<< "$THREADS" | sort -rn); do
    bench_run "${label}_t$t" "$@" --threads "$t" || rc=$?
  done
  return "$rc"
}
stage_nanogpt_cpu() {
  sweep_run nanogpt_cpu --preset nanogpt --steps 2 --warmup 1 --rounds 1
}
stage_nanogpt_bf16() {
  # chargpt's bf16 products are oneDNN's AMX kernels: it refuses --precision bf16 without AMX.
  if ! grep -m1 '^flags' /proc/cpuinfo | grep -qw amx_bf16; then
    echo "no amx_bf16 on this CPU ($(grep -m1 '^flags' /proc/cpuinfo | grep -ow avx512_bf16 || echo 'nor avx512_bf16')): chargpt's bf16 needs AMX, no bf16 sweep"; return 3
  fi
  sweep_run nanogpt_cpu_bf16 --preset nanogpt --precision bf16 --steps 2 --warmup 1 --rounds 1
}
stage_baby_cpu() {
  bench_run baby_cpu --preset baby --threads "$THREADS" --steps 20 --warmup 3 --rounds 2
}

peer_run() {  # peer_run LABEL [flags...]: one JSON line into $RES/peer_LABEL.json
  local label=$1; shift
  [ -n "$PEER" ] || { echo "no scripts/torch_gpt_ref.py nor scripts/reference/torch_gpt_ref.py"; return 1; }
  "$PY" "$PEER" bench --threads "$NTHREADS" "$@" > "$RES/peer_$label.json"
}
stage_peer_gpu() {
  local rc=0
  peer_run nanogpt_cuda "${NANOGPT_PEER[@]}" --device cuda --steps 20 --warmup 5 || rc=$?
  peer_run nanogpt_cuda_bf16 "${NANOGPT_PEER[@]}" --device cuda --bf16 --steps 20 --warmup 5 || rc=$?
  peer_run baby_cuda --device cuda --steps 30 --warmup 5 || rc=$?
  peer_run baby_cuda_bf16 --device cuda --bf16 --steps 30 --warmup 5 || rc=$?
  return "$rc"
}

# What each stage writes into $RES: removed before the stage runs again, so that a rerun's
# summary never mixes its results with stale ones (those of stages not rerun stay).
declare -A STAGE_FILES=([system]="system.txt" [info]="info.txt" [ctest]="ctest.txt ctest.xml"
  [baby_loss]="train_cpu.jsonl train_cuda.jsonl" [nanogpt_gpu]="bench_nanogpt_cuda.* bench_nanogpt_cuda_tf32.* bench_nanogpt_cuda_bf16.* bench_baby_cuda.*"
  [cuda_switches]="bench_nanogpt_cuda_plain* bench_nanogpt_cuda_no* bench_nanogpt_cuda_defaults*"
  [peer_gpu]="peer_*_cuda*.json" [nanogpt_cpu]="bench_nanogpt_cpu.* bench_nanogpt_cpu_t*"
  [nanogpt_bf16]="bench_nanogpt_cpu_bf16*" [baby_cpu]="bench_baby_cpu.* bench_baby_cpu_t*" [peer_cpu]="peer_*_cpu*.json")
stage_peer_cpu() {  # quickest first: a stage stopped by its limit keeps what it finished
  local rc=0
  peer_run baby_cpu --steps 20 --warmup 3 || rc=$?
  peer_run baby_cpu_bf16 --bf16 --steps 20 --warmup 3 || rc=$?
  peer_run nanogpt_cpu "${NANOGPT_PEER[@]}" --steps 2 --warmup 1 || rc=$?
  peer_run nanogpt_cpu_bf16 "${NANOGPT_PEER[@]}" --bf16 --steps 2 --warmup 1 || rc=$?
  return "$rc"
}

export -f stage_system stage_build stage_info stage_ctest train_run stage_baby_loss bench_run sweep_run \
  stage_nanogpt_gpu stage_cuda_switches stage_nanogpt_cpu stage_nanogpt_bf16 stage_baby_cpu peer_run stage_peer_gpu \
  stage_peer_cpu bindir
export ROOT W RES BUILD HAVE_GPU PY PEER THREADS NTHREADS JOBS force_prebuilt
export NANOGPT_PEER_STR="${NANOGPT_PEER[*]}"
PREFIX_CMAKE_ARGS_STR=$(printf '%q ' "${PREFIX_CMAKE_ARGS[@]}")
export PREFIX_CMAKE_ARGS_STR

# run_stage NAME: under timeout (its own limit, or what is left of the budget), output into
# log.txt, one line on stdout, one row in stages.tsv. Exit 3 from a stage = skipped (not a failure).
run_stage() {
  local name=$1 left lim t1 rc status note=""
  left=$(( budget - $(elapsed) - 15 ))          # 15 s kept for the summary
  lim=$(( ${LIMIT[$name]} * ${DEVICE_CHECK_LIMIT_SCALE:-1} )); [ "$left" -lt "$lim" ] && lim=$left
  if [ "$lim" -lt 20 ]; then
    printf '%s\tskipped\t0\tout of time (%s s of the %s s budget left)\n' "$name" "$left" "$budget" >> "$STAGES_TSV"
    say "$name: skipped: out of time"; return
  fi
  echo "==== stage $name (limit ${lim}s, at $(elapsed)s)" >> "$LOG"
  (cd "$RES" && rm -f ${STAGE_FILES[$name]:-})
  t1=$(date +%s)
  timeout -k 10 "$lim" bash -c "NANOGPT_PEER=(\$NANOGPT_PEER_STR); eval \"PREFIX_CMAKE_ARGS=(\$PREFIX_CMAKE_ARGS_STR)\"; stage_$name" >> "$LOG" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    3) status=skipped; note=$(tail -1 "$LOG") ;;
    124|137) status=TIMEOUT; note="stopped after ${lim}s" ;;
    *) status=FAILED; note="exit $rc; see log.txt" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t1 ))" "$note" >> "$STAGES_TSV"
  say "$name: $status ($(( $(date +%s) - t1 )) s)${note:+: $note}"
  STATUS[$name]=$status
}
declare -A STATUS=()
# A run without the build stage (a rerun of later stages) uses the earlier build if the machine
# still has it, else builds first (with --prebuilt: the prebuilt binaries).
if [ "$force_prebuilt" = 1 ]; then
  use_prebuilt >> "$LOG" 2>&1 || say "--prebuilt: no .carry/prebuilt/chargpt"
elif [[ " ${SELECTED[*]} " != *" build "* ]] && [ ! -x "$BUILD/chargpt" ]; then
  say "no earlier build here: building first"
  SELECTED=(build "${SELECTED[@]}")
fi

for s in "${SELECTED[@]}"; do
  if [[ "$GPU_STAGES" == *" $s "* ]] && [ "$HAVE_GPU" = 0 ]; then
    printf '%s\tskipped\t0\tno GPU here: skipped\n' "$s" >> "$STAGES_TSV"; say "$s: no GPU here: skipped"; continue
  fi
  if [[ "$GPU_STAGES" == *" $s "* ]] && [ "$cpu_only" = 1 ]; then
    printf '%s\tskipped\t0\t--cpu-only\n' "$s" >> "$STAGES_TSV"; say "$s: skipped (--cpu-only)"; continue
  fi
  run_stage "$s"
  if [ "$s" = build ] && [ "${STATUS[build]:-none}" != ok ] && [ "$force_prebuilt" = 0 ]; then
    if use_prebuilt >> "$LOG" 2>&1; then
      say "build: using the prebuilt binaries from .carry/prebuilt"
      printf 'fallback\tok\t0\tprebuilt chargpt, chargpt_tests, libchargpt_cuda.so (-DCHARGPT_NATIVE=OFF)\n' >> "$STAGES_TSV"
    else
      say "build: no prebuilt binaries to fall back on"
    fi
  fi
done
printf 'total\t-\t%s\t\n' "$(elapsed)" >> "$STAGES_TSV"
echo "bindir	$(bindir)" > "$RES/meta.tsv"
"$PY" "$SCRIPTS/device_summary.py" "$RES" "$OUTDIR" >> "$LOG" 2>&1 || say "summary: FAILED (see log.txt); the raw files are in $RES"
echo
cat "$OUTDIR/summary.md" 2>/dev/null
say "done in $(elapsed) s; outputs in $OUTDIR: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
exit 0
