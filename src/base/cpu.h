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
  // The AVX-512 oneDNN's avx512_core kernels need (F and BW; VL and DQ come with them on every such CPU).
  bool avx512() const { return avx512f && avx512bw; }
  // Instructions that multiply bf16 with fp32 sums: AVX512-BF16 or AMX-BF16.
  bool bf16() const { return avx512_bf16 || amx(); }
};

// This machine's CPU (probed on the first call).
const CpuFeatures& cpu_features();

// The features present, space-separated in the order of the struct, e.g.
// "avx2 fma avx512f avx512bw"; "(none of avx2, avx512, amx)" when none is.
std::string cpu_features_text(const CpuFeatures& f = cpu_features());

// The CPU's brand string (CPUID 0x80000002..4, trimmed), e.g. "AMD EPYC 9R14 96-Core Processor";
// "unknown CPU" when it has none.
const std::string& cpu_model_name();

// This CPU in one phrase for messages and checkpoints: "<model name> (<features>)".
std::string cpu_description();

}  // namespace chargpt
