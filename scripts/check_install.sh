#!/usr/bin/env bash
# CI check of the install: `cmake --install` of build/ into a temporary prefix, then
# `chargpt info` and a 5-step train run from P/bin (outside the source tree); then
# `cpack -G DEB`, the package's control fields and contents (dpkg-deb -f/-c), the same
# two runs from the unpacked package (dpkg-deb -x), and apt's check that its Depends
# resolve here (apt-get -s install). The system itself is not changed.
# Needs a configured and built build/ (scripts/build.sh) and data/ (scripts/fetch_data.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
data=$root/data/tinyshakespeare.txt
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail() { echo "check_install: $*" >&2; exit 1; }
[ -f build/CPackConfig.cmake ] || fail "no configured build/ (run scripts/build.sh)"
[ -f "$data" ] || fail "no $data (run scripts/fetch_data.sh)"
cuda=$(grep -q '^CHARGPT_WITH_CUDA:INTERNAL=ON' build/CMakeCache.txt 2>/dev/null && echo 1 || echo 0)
cuda=$([ -f build/libchargpt_cuda.so ] && echo 1 || echo "$cuda")

# Runs the installed chargpt at $1: info (and the CUDA module loads where it was built), 5 steps.
smoke() {
  local exe=$1 where=$2
  [ -x "$exe" ] || fail "$where: no executable at $exe"
  (cd "$tmp" && "$exe" info) > "$tmp/info.txt" || fail "$where: chargpt info failed"
  grep -q '^chargpt ' "$tmp/info.txt" || fail "$where: chargpt info printed no version line"
  if [ "$cuda" = 1 ] && grep -q 'cannot be loaded' "$tmp/info.txt"; then
    fail "$where: the CUDA module was not found: $(grep '^cuda' "$tmp/info.txt")"
  fi
  (cd "$tmp" && OPENBLAS_NUM_THREADS=1 "$exe" train --data "$data" --steps 5 --eval-interval 0 \
     --out "$tmp/run/w.safetensors" --force) > "$tmp/train.txt" 2>&1 || { cat "$tmp/train.txt" >&2; fail "$where: 5-step train failed"; }
  [ -s "$tmp/run/w.safetensors" ] || fail "$where: the train wrote no checkpoint"
  rm -rf "$tmp/run"
  echo "check_install: $where: info and a 5-step train ran from $exe"
}

cmake --install build --prefix "$tmp/prefix" > /dev/null
smoke "$tmp/prefix/bin/chargpt" "cmake --install"
[ "$cuda" = 0 ] || [ -f "$tmp/prefix/lib/chargpt/libchargpt_cuda.so" ] || fail "the CUDA module was not installed"

(cd build && cpack -G DEB -B "$tmp/pkg" > "$tmp/cpack.txt" 2>&1) || { cat "$tmp/cpack.txt" >&2; fail "cpack -G DEB failed"; }
deb=$(ls "$tmp"/pkg/chargpt_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || fail "cpack made no chargpt_*.deb"
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libc6 libstdc++6 libtbb12 libopenblas; do
  [[ "$depends" == *"$lib"* ]] || fail "$(basename "$deb"): Depends lacks $lib: '$depends'"
done
dpkg-deb -c "$deb" > "$tmp/contents.txt"
grep -q ' \./usr/bin/chargpt$' "$tmp/contents.txt" || fail "$(basename "$deb") has no /usr/bin/chargpt"
for d in "$tmp"/pkg/*.deb; do dpkg-deb -x "$d" "$tmp/unpacked"; done
smoke "$tmp/unpacked/usr/bin/chargpt" "$(basename "$deb") (unpacked)"
if command -v apt-get > /dev/null; then
  apt-get install -s -q "$deb" > "$tmp/apt.txt" 2>&1 || { cat "$tmp/apt.txt" >&2; fail "apt cannot resolve $(basename "$deb")'s Depends"; }
  echo "check_install: apt-get -s resolves $(basename "$deb") (Depends: $depends)"
fi
echo "check_install: ok"
