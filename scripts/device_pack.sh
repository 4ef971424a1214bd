#!/usr/bin/env bash
# Prepares, here (Debian 12), what scripts/device_check.sh needs on the lent GPU machine, which
# has none of our Debian packages and no network. Everything goes to .carry/ (ignored; the
# run call names it in `carry`):
#   .carry/debs/      the .debs we build with (scripts/device_prefix.sh lists them), apt-get download
#   .carry/data/      Tiny Shakespeare (data/ is ignored, so it would not travel)
#   .carry/prebuilt/  chargpt, chargpt_tests, libchargpt_cuda.so built portably (-DCHARGPT_NATIVE=OFF)
#                     against the unpacked packages: the fallback when the build there fails
#
# usage: scripts/device_pack.sh [--download] [--rehearse] [--prebuild]
#   (no option: --download --rehearse)
#   --download  fetch what is missing from .carry/debs (apt-get update once if needed), copy the data
#   --rehearse  in a private mount namespace where every file of those packages installed here is
#               hidden (/dev/null bound over it), unpack .carry/debs into build-device/prefix and run
#               scripts/device_check.sh --cpu-only --stages system,build,info,ctest against it alone,
#               then show with ldd that chargpt loads the prefix's libraries
#   --prebuild  build the fallback binaries into .carry/prebuilt (from /tmp/chargpt-prebuilt/src and
#               /tmp/chargpt-prebuilt/build, links that device_check.sh recreates there, because the
#               tests have the data file's and chargpt's paths compiled in)
# Nothing is ever unpacked into /.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/device_prefix.sh
. scripts/device_prefix.sh
CARRY=$ROOT/.carry

do_download=0 do_rehearse=0 do_prebuild=0 inside=0
[ $# -eq 0 ] && { do_download=1; do_rehearse=1; }
for a in "$@"; do
  case "$a" in
    --download) do_download=1 ;;
    --rehearse) do_rehearse=1 ;;
    --prebuild) do_prebuild=1 ;;
    --rehearse-inside) inside=1 ;;   # internal: the namespace's half of --rehearse
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "device_pack: unknown option '$a' (see --help)" >&2; exit 2 ;;
  esac
done

download() {
  mkdir -p "$CARRY/debs" "$CARRY/data"
  local missing=() pkg n
  for pkg in "${DEVICE_DEBS[@]}" "${DEVICE_DEBS_GCCRT[@]}"; do
    n=$(find "$CARRY/debs" -maxdepth 1 -name "${pkg}_*.deb" | wc -l)
    if [ "$n" -ne 1 ]; then rm -f "$CARRY/debs/${pkg}"_*.deb; missing+=("$pkg"); fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "device_pack: downloading ${missing[*]}"
    # root's apt-get download drops to the _apt user, who cannot write here: stay root.
    if ! (cd "$CARRY/debs" && apt-get -q -o APT::Sandbox::User=root download "${missing[@]}"); then
      echo "device_pack: apt-get download failed; apt-get update, then again"
      apt-get -q update
      (cd "$CARRY/debs" && apt-get -q -o APT::Sandbox::User=root download "${missing[@]}")
    fi
  else
    echo "device_pack: .carry/debs has every package"
  fi
  scripts/fetch_data.sh
  cp data/tinyshakespeare.txt "$CARRY/data/"
  (cd "$CARRY/debs" && ls -1 ./*.deb | sed 's|^\./||') > "$CARRY/debs/MANIFEST.txt"
}

rehearse_inside() {
  # Hide every file that the installed packages put on this system (documentation aside), so
  # that CMake, the compiler and the loader can find them only in the prefix. GCC's runtime
  # libraries stay: the host compiler needs them, as it will there.
  local pkg f n=0
  for pkg in "${DEVICE_DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || continue
    while read -r f; do
      case "$f" in /usr/share/doc/*|/usr/share/lintian/*|/usr/share/man/*) continue ;; esac
      if [ -f "$f" ] && [ ! -d "$f" ]; then mount --bind /dev/null "$f"; n=$((n + 1)); fi
    done < <(dpkg -L "$pkg")
  done
  echo "device_pack: rehearsal: $n files of the installed packages hidden (bound to /dev/null)"
  [ -s /usr/lib/$DEVICE_MULTIARCH/libtbb.so.12 ] && { echo "device_pack: hiding failed: libtbb.so.12 is still readable" >&2; exit 1; }
  rm -rf build-device/prefix build-pack/out
  DEVICE_CHECK_LIMIT_SCALE=10 scripts/device_check.sh build-pack/out --cpu-only --stages system,build,info,ctest --budget 3000
  cat build-device/res/stages.tsv
  echo "== ldd build-device/build/chargpt (LD_LIBRARY_PATH as device_check sets it)"
  prefix_env "$ROOT/build-device/prefix"
  ldd build-device/build/chargpt | tee build-pack/ldd.txt
  local lib bad=0
  for lib in libtbb.so.12 libopenblas.so.0 libdnnl.so.2 libOpenCL.so.1; do
    grep -q "$lib => $ROOT/build-device/prefix/" build-pack/ldd.txt || { echo "device_pack: $lib does not come from the prefix" >&2; bad=1; }
  done
  grep -qE 'not found|file too short' build-pack/ldd.txt && { echo "device_pack: ldd: a library was not found" >&2; bad=1; }
  grep -qE '^ctest[[:space:]]ok' build-device/res/stages.tsv || { echo "device_pack: the test suite failed against the prefix" >&2; bad=1; }
  grep -qE '^build[[:space:]]ok' build-device/res/stages.tsv || { echo "device_pack: the build against the prefix failed" >&2; bad=1; }
  [ "$bad" = 0 ] && echo "device_pack: rehearsal passed: built and tested against the prefix alone"
  return "$bad"
}

rehearse() {
  command -v unshare >/dev/null || { echo "device_pack: --rehearse needs unshare (util-linux)" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "device_pack: --rehearse needs root (a private mount namespace)" >&2; exit 1; }
  unshare --mount --propagation private "$0" --rehearse-inside
}

prebuild() {
  local p=$ROOT/build-pack/prefix src=/tmp/chargpt-prebuilt/src bin=/tmp/chargpt-prebuilt/build gen=() launcher=()
  prefix_unpack "$CARRY/debs" "$p"
  prefix_env "$p"
  mkdir -p /tmp/chargpt-prebuilt "$ROOT/build-pack/prebuilt"
  ln -sfn "$ROOT" "$src"
  ln -sfn "$ROOT/build-pack/prebuilt" "$bin"
  command -v ninja >/dev/null && gen=(-G Ninja)
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  cmake -S "$src" -B "$bin" "${gen[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release -DCHARGPT_NATIVE=OFF \
    -DCHARGPT_CUDA=ON -DCHARGPT_MPI=OFF -DCHARGPT_ONEDNN=ON "${PREFIX_CMAKE_ARGS[@]}" > "$ROOT/build-pack/prebuild-configure.log"
  cmake --build "$bin" -j"$(nproc)" --target chargpt chargpt_tests
  rm -rf "$CARRY/prebuilt"; mkdir -p "$CARRY/prebuilt"
  cp "$bin/chargpt" "$bin/chargpt_tests" "$bin/libchargpt_cuda.so" "$CARRY/prebuilt/"
  strip --strip-unneeded "$CARRY/prebuilt/"*
  echo "device_pack: prebuilt (portable, CUDA on) in .carry/prebuilt: $(du -sh "$CARRY/prebuilt" | cut -f1)"
}

sizes() {
  local tree carry
  tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  carry=$(du -sb "$CARRY" | cut -f1)
  echo "device_pack: .carry: $(du -sh "$CARRY"/* | tr '\t\n' ' ')"
  echo "device_pack: what travels: tree $((tree / 1024)) KiB + .carry $((carry / 1024)) KiB = $(((tree + carry) / 1048576)) MiB (limit 64 MiB)"
  [ $((tree + carry)) -lt $((64 * 1048576)) ] || { echo "device_pack: over the 64 MiB that may travel" >&2; return 1; }
}

if [ "$inside" = 1 ]; then rehearse_inside; exit $?; fi
[ "$do_download" = 1 ] && download
[ -d "$CARRY/debs" ] || { echo "device_pack: no .carry/debs yet: run with --download first" >&2; exit 1; }
[ "$do_prebuild" = 1 ] && prebuild
[ "$do_rehearse" = 1 ] && rehearse
sizes
