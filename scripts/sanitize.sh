#!/usr/bin/env bash
# The whole CTest suite under AddressSanitizer (with LeakSanitizer) and
# UndefinedBehaviorSanitizer: builds into build-asan/ (-O1 -g1, with
# -DCHARGPT_SANITIZE=address,undefined) and runs ctest there. -O1 (the level the ASan
# docs recommend) with line tables only (-g1: file:line in every report, no variable
# info) compiles 2.3x faster than -O2 -g; the build was most of CI's time. Any report fails
# the run: UBSan halts on its first error, ASan always does.
# Extra arguments go to ctest, e.g. scripts/sanitize.sh -R 'engine:*'.
#
# ThreadSanitizer needs oneTBB built with it: scripts/tsan.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/fetch_data.sh
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
  -DCHARGPT_SANITIZE=address,undefined >/dev/null
cmake --build build-asan -j"$(nproc)"
# detect_leaks: LeakSanitizer at exit. The spawned chargpt binaries (CLI tests)
# inherit these settings.
# protect_shadow_gap=0: the CUDA runtime maps device memory at addresses inside ASan's shadow gap
# (cudaMalloc fails with "out of memory" or the runtime aborts at start-up otherwise).
export ASAN_OPTIONS=protect_shadow_gap=0:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}
# Open MPI, the CUDA runtime, oneDNN and libgomp keep process-lifetime allocations that LSan
# reports at exit; tests/lsan.supp names those libraries (and nothing of ours).
export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}
ctest --test-dir build-asan --output-on-failure -j"$(nproc)" "$@"
