#pragma once
// What this CPU offers chargpt's kernels and backends, probed once (CPUID).
// The one place that asks: the backends check it before using an instruction
// set, `chargpt info` prints it.
#include <string>

namespace chargpt {

struct CpuFeatures {
  bool avx2 = false, fma = false;
  bool avx512f = false, avx512bw = false;
  bool avx512_bf16 = false;  // CPUID.(7,1):EAX bit 5
  bool amx_tile = false;     // CPUID.(7,0):EDX bit 24
  bool amx_bf16 = false;     // CPUID.(7,0):EDX bit 22
  // bf16 matrix products on AMX tiles: both AMX bits.
  bool amx() const { return amx_tile && amx_bf16; }
};

// This machine's CPU (probed on the first call).
const CpuFeatures& cpu_features();

// The features present, space-separated in the order of the struct, e.g.
// "avx2 fma avx512f avx512bw"; "(none of avx2, avx512, amx)" when none is.
std::string cpu_features_text(const CpuFeatures& f = cpu_features());

}  // namespace chargpt
