#!/usr/bin/env bash
# Set up (packages, build, data) and run the whole test suite under CTest, then print
# one closing line that counts the skips apart: "N passed, N failed, N skipped"
# (CTest's own summary counts a skipped test as not failed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
scripts/fetch_data.sh
junit=build/ctest-results.xml
status=0
ctest --test-dir build --output-on-failure -j"$(nproc)" --output-junit "$PWD/$junit" || status=$?
# The counts are attributes of the JUnit file's <testsuite> element, one per line.
attr() { grep -m1 -o "^[[:space:]]*$1=\"[0-9]*\"" "$junit" | grep -o '[0-9]*'; }
if [ -f "$junit" ] && tests=$(attr tests) && failures=$(attr failures) && skipped=$(attr skipped); then
  echo "tests: $((tests - failures - skipped)) passed, $failures failed, $skipped skipped"
fi
exit "$status"
