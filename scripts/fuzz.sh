#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, -fsanitize=fuzzer,address,undefined) into build-fuzz/
# and runs them all at once, each for SECONDS (default 60) on a copy of its seed corpus.
# Usage: scripts/fuzz.sh [SECONDS] [extra libFuzzer flags...]
# Inputs go up to -max_len=262144 bytes (a real checkpoint's header is ~1-20 KB; libFuzzer's
# default of 4096 could not reach a deeply nested header). Each target's log is in
# build-fuzz/logs/TARGET.log; its coverage lines and final stats are printed at the end.
# A crash leaves its input in build-fuzz/crashes/TARGET/ and makes the script fail;
# copy it to tests/fuzz/regressions/ (tests/io/test_fuzz_corpus.cpp runs every file there).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
command -v clang++-14 >/dev/null || { echo "fuzz.sh: clang++-14 is needed (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 2; }
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCHARGPT_FUZZ=ON -DCHARGPT_TESTS=OFF >/dev/null
targets=(safetensors checkpoint utf8)
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}"
mkdir -p build-fuzz/logs
pids=()
for t in "${targets[@]}"; do
  work=build-fuzz/corpus/$t crashes=build-fuzz/crashes/$t
  mkdir -p "$work" "$crashes"
  echo "== fuzz_$t for ${seconds}s (log: build-fuzz/logs/$t.log)"
  # The seed corpus is read, the working copy grows; -rss_limit_mb: a read that allocates
  # what the file does not hold is a finding.
  (cd "$crashes" && OPENBLAS_NUM_THREADS=1 exec ../../fuzz_$t -max_total_time="$seconds" -rss_limit_mb=1024 \
     -max_len=262144 -print_final_stats=1 "$@" ../../corpus/$t ../../../tests/fuzz/corpus/$t) \
    >"build-fuzz/logs/$t.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  rc=0
  wait "${pids[$i]}" || rc=$?
  echo "== fuzz_$t: exit $rc"
  # Coverage as it grew (every 'NEW'/'REDUCE'/'pulse' line has cov: and ft:), then the end.
  grep -E '^#[0-9]+' "build-fuzz/logs/$t.log" | awk 'NR % 20 == 1' | tail -n 15 || true
  grep -E '^#[0-9]+.*(DONE|cov:)' "build-fuzz/logs/$t.log" | tail -n 1 || true
  grep -E '^stat::|ERROR|SUMMARY|artifact' "build-fuzz/logs/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    echo "fuzz.sh: fuzz_$t found a problem; inputs in build-fuzz/crashes/$t" >&2
    status=1
  fi
done
exit $status
