#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, -fsanitize=fuzzer,address,undefined) into build-fuzz/
# and runs each for SECONDS (default 60) on a copy of its seed corpus, in parallel
# over at most JOBS targets at once (default: nproc).
# Usage: scripts/fuzz.sh [SECONDS] [extra libFuzzer flags...]
# A crash leaves its input in build-fuzz/crashes/TARGET/ and makes the script fail;
# copy it to tests/fuzz/regressions/ and add a case to tests/io/test_fuzz_corpus.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
command -v clang++-14 >/dev/null || { echo "fuzz.sh: clang++-14 is needed (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 2; }
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCHARGPT_FUZZ=ON -DCHARGPT_TESTS=OFF >/dev/null
targets=(safetensors checkpoint utf8)
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}"
status=0
for t in "${targets[@]}"; do
  work=build-fuzz/corpus/$t crashes=build-fuzz/crashes/$t
  mkdir -p "$work" "$crashes"
  echo "== fuzz_$t for ${seconds}s"
  # The seed corpus is read, the working copy grows; -rss_limit_mb: a read that allocates
  # what the file does not hold is a finding.
  if ! (cd "$crashes" && OPENBLAS_NUM_THREADS=1 ../../fuzz_$t -max_total_time="$seconds" -rss_limit_mb=1024 \
        -print_final_stats=1 "$@" ../../corpus/$t ../../../tests/fuzz/corpus/$t) 2>&1 | tail -n 20; then
    echo "fuzz.sh: fuzz_$t found a problem; inputs in $crashes" >&2
    status=1
  fi
done
exit $status
