#!/usr/bin/env bash
# Set up (packages, build, data) and run the whole test suite under CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
scripts/fetch_data.sh
ctest --test-dir build --output-on-failure -j"$(nproc)"
