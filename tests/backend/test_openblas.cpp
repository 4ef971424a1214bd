// The OpenBLAS backend's environment set-up: which CPUs get which kernel family.
#include <doctest/doctest.h>

#include "backend/backend.h"

using namespace chargpt;

TEST_CASE("openblas: every AVX-512 CPU that OpenBLAS does not name SkylakeX gets SkylakeX kernels") {
  CpuFeatures avx512;
  avx512.avx2 = avx512.fma = avx512.avx512f = avx512.avx512bw = true;
  // Names OpenBLAS 0.3.21 gave AVX-512 CPUs: Zen 4, Sapphire Rapids, and the H200 machine's
  // virtual Xeon with a generic CPUID model.
  for (const char* core : {"Zen", "Haswell", "Cooperlake", "Prescott", "prescott"}) {
    CAPTURE(core);
    CHECK(openblas_coretype_override(avx512, core) == "SKYLAKEX");
  }
  CHECK(openblas_coretype_override(avx512, "SkylakeX") == "");
  CpuFeatures avx2;
  avx2.avx2 = avx2.fma = true;
  CHECK(openblas_coretype_override(avx2, "Zen") == "");
  CHECK(openblas_coretype_override(avx2, "Haswell") == "");
  CpuFeatures f_only = avx512;  // AVX-512F without BW (Xeon Phi): SkylakeX's kernels need BW
  f_only.avx512bw = false;
  CHECK(openblas_coretype_override(f_only, "Prescott") == "");
}
