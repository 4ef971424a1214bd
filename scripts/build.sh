#!/usr/bin/env bash
# Installs what is missing, then configures and builds into build/ (Release, -march=native by default).
# Extra arguments go to cmake's configure step, e.g. -DCHARGPT_NATIVE=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)  # rebuilds after a branch switch
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "$@" >/dev/null
cmake --build build -j"$(nproc)"
