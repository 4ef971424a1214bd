# Sourced by scripts/device_pack.sh and scripts/device_check.sh (not run on its own).
# The Debian packages chargpt builds with, for a machine that has none of them and no
# network: downloaded here into .carry/debs, unpacked there with `dpkg -x` into a prefix
# folder (never into /), and the environment that points CMake and the loader at it.

# What CMake and the loader need, checked with apt-cache depends, ldd and the packages'
# CMake files: oneDNN's config calls find_package(OpenCL REQUIRED), so the OpenCL headers
# and libOpenCL.so come along although libdnnl-dev does not depend on them; libtbbbind
# (and hwloc under it) is what TBB dlopens for NUMA, optional but cheap. Open MPI stays off.
DEVICE_DEBS=(libtbb-dev libtbb12 libtbbmalloc2 libtbbbind-2-5 libhwloc15
  libopenblas-dev libopenblas0 libopenblas-pthread-dev libopenblas0-pthread
  libdnnl-dev libdnnl2 ocl-icd-libopencl1 ocl-icd-opencl-dev opencl-c-headers
  libcxxopts-dev doctest-dev nlohmann-json3-dev)
# GCC 12's runtime libraries under OpenBLAS (libgfortran, libquadmath) and oneDNN (libgomp).
# A host with a compiler has its own (newer, compatible) libgomp: the prefix offers each of
# these only where the host has none, so that they never shadow the host's.
DEVICE_DEBS_GCCRT=(libgfortran5 libquadmath0 libgomp1)
DEVICE_GCCRT_SONAMES=(libgfortran.so.5 libquadmath.so.0 libgomp.so.1)
DEVICE_MULTIARCH=x86_64-linux-gnu

# deb_x DEB DIR: `dpkg -x`; on a host without dpkg, the package's data.tar.* through Python
# (a .deb is an ar archive; Python's tarfile reads the xz/gz/bz2 compression).
deb_x() {
  if command -v dpkg-deb >/dev/null && [ -z "${DEVICE_NO_DPKG:-}" ]; then dpkg-deb -x "$1" "$2"; return; fi
  "${PYTHON:-python3}" - "$1" "$2" <<'EOF'
import io, sys, tarfile
deb, dest = sys.argv[1:]
data = open(deb, "rb").read()
if data[:8] != b"!<arch>\n":
    sys.exit(f"deb_x: {deb} is not a Debian package (no ar header)")
pos = 8
while pos + 60 <= len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58])
    if name.startswith("data.tar"):
        with tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])) as t:
            if hasattr(tarfile, "tar_filter"):
                t.extractall(dest, filter="tar")
            else:
                t.extractall(dest)
        sys.exit(0)
    pos += 60 + size + (size & 1)
sys.exit(f"deb_x: {deb} has no data.tar member")
EOF
}

# prefix_unpack DEBS_DIR PREFIX: dpkg -x every .deb into PREFIX (the GCC runtime ones into
# PREFIX/gccrt-pkg), then writes PREFIX/fixups/ (see prefix_fixups). Idempotent: a prefix
# whose stamp matches the .deb list is kept.
prefix_unpack() {
  local debs=$1 prefix=$2 stamp want f name pkg
  want=$(cd "$debs" && ls -1 ./*.deb 2>/dev/null | sort | md5sum | cut -d' ' -f1)
  stamp="$prefix/.unpacked"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$prefix/fixups" ]; then return 0; fi
  for pkg in "${DEVICE_DEBS[@]}" "${DEVICE_DEBS_GCCRT[@]}"; do
    ls "$debs/${pkg}"_*.deb >/dev/null 2>&1 || { echo "device_prefix: $debs has no ${pkg}_*.deb (run scripts/device_pack.sh here)" >&2; return 1; }
  done
  rm -rf "$prefix"
  mkdir -p "$prefix/gccrt-pkg"
  for f in "$debs"/*.deb; do
    name=$(basename "$f"); pkg=${name%%_*}
    if [[ " ${DEVICE_DEBS_GCCRT[*]} " == *" $pkg "* ]]; then
      deb_x "$f" "$prefix/gccrt-pkg" || return 1
    else
      deb_x "$f" "$prefix" || return 1
    fi
  done
  prefix_fixups "$prefix" || return 1
  echo "$want" > "$stamp"
}

# prefix_fixups PREFIX: two of the packages' CMake files name /usr outright (Debian's
# OpenBLASConfig.cmake sets absolute paths; doctestTargets.cmake sets _IMPORT_PREFIX "/usr").
# Copies of them with the prefix put in go to PREFIX/fixups/; the packages stay as shipped.
# The others compute their prefix from where they lie, so they work as unpacked.
prefix_fixups() {
  local p=$1 lib ob dt
  lib=$p/usr/lib/$DEVICE_MULTIARCH
  ob=$lib/openblas-pthread/cmake/openblas
  dt=$p/usr/lib/cmake/doctest
  [ -f "$ob/OpenBLASConfig.cmake" ] && [ -f "$dt/doctestTargets.cmake" ] || {
    echo "device_prefix: $p lacks OpenBLAS's or doctest's CMake files" >&2; return 1; }
  rm -rf "$p/fixups"; mkdir -p "$p/fixups/openblas" "$p/fixups/doctest"
  sed "s|/usr/|$p/usr/|g" "$ob/OpenBLASConfig.cmake" > "$p/fixups/openblas/OpenBLASConfig.cmake"
  cp "$ob/OpenBLASConfigVersion.cmake" "$p/fixups/openblas/"
  cp "$dt"/*.cmake "$p/fixups/doctest/"
  sed -i "s|^set(_IMPORT_PREFIX \"/usr\")|set(_IMPORT_PREFIX \"$p/usr\")|" "$p/fixups/doctest/doctestTargets.cmake"
  grep -q "_IMPORT_PREFIX \"$p/usr\"" "$p/fixups/doctest/doctestTargets.cmake" || {
    echo "device_prefix: doctestTargets.cmake's _IMPORT_PREFIX line not found: fix-up failed" >&2; return 1; }
  # The GCC runtime libraries the host lacks (a soname in ld.so's cache counts only if its
  # file is really there and not empty), as links in PREFIX/gccrt.
  rm -rf "$p/gccrt"; mkdir -p "$p/gccrt"
  local so have path
  for so in "${DEVICE_GCCRT_SONAMES[@]}"; do
    have=0
    while read -r path; do [ -s "$path" ] && have=1; done < <(ldconfig -p 2>/dev/null | awk -v s="$so" '$1 == s && /x86-64/ {print $NF}')
    if [ "$have" = 0 ]; then
      ln -s "$p/gccrt-pkg/usr/lib/$DEVICE_MULTIARCH/$so" "$p/gccrt/$so"
      echo "device_prefix: the host has no $so: the prefix's GCC 12 copy is used"
    fi
  done
}

# prefix_env PREFIX: exports LD_LIBRARY_PATH and CMAKE_PREFIX_PATH for the prefix and sets
# the array PREFIX_CMAKE_ARGS: each package's config folder named outright, so that CMake
# takes these and nothing the host may have.
prefix_env() {
  local p=$1 lib=$1/usr/lib/$DEVICE_MULTIARCH
  export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread:$p/gccrt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export CMAKE_PREFIX_PATH="$p/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  PREFIX_CMAKE_ARGS=(
    -DCMAKE_PREFIX_PATH="$p/usr"
    -DTBB_DIR="$lib/cmake/TBB"
    -DOpenBLAS_DIR="$p/fixups/openblas"
    -Dcxxopts_DIR="$p/usr/lib/cmake/cxxopts"
    -Dnlohmann_json_DIR="$p/usr/share/cmake/nlohmann_json"
    -Ddoctest_DIR="$p/fixups/doctest"
    -Ddnnl_DIR="$lib/cmake/dnnl"
    -DOpenCL_INCLUDE_DIR="$p/usr/include"
    -DOpenCL_LIBRARY="$lib/libOpenCL.so"
  )
}
