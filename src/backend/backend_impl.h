#pragma once
// For the backends' own files and the registry: one row per backend, and the
// loops the CPU backends share.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace chargpt {

// One backend of the registry (registry.cpp), compiled in or not.
struct BackendEntry {
  BackendKind kind;
  const char* name;  // as --backend spells it
  unsigned precisions;  // the precisions it offers: bits 1 << Precision
  bool tf32;            // whether it takes --tf32
  // "" when a backend with these options can run in this build on this machine,
  // otherwise why not: one line naming the flag and what to do instead. Called
  // only for options the row offers (precisions, tf32).
  std::string (*unavailable)(const BackendOptions& opt);
  // Makes one. make_backend calls it only when unavailable(opt) is ""; the
  // conformance tests also where the backend computes but is not offered (bf16
  // without AMX). May throw std::runtime_error for what only trying shows (no CUDA device).
  std::unique_ptr<Backend> (*make)(const BackendOptions& opt);
  // Lines for `chargpt info`: version, configuration, what this machine offers.
  std::string (*info)();
};

constexpr unsigned precision_bit(Precision p) { return 1u << (unsigned)p; }

// "" when the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16), else the one line saying so.
std::string bf16_cpu_missing(const CpuFeatures& cpu);

// Every backend this program knows, in --backend's order.
const std::vector<BackendEntry>& backend_registry();

// The rows, each defined beside its backend.
BackendEntry openblas_entry();  // backend_openblas.cpp
#ifdef CHARGPT_HAVE_ONEDNN
BackendEntry onednn_entry();  // backend_onednn.cpp
// The implementation oneDNN picks for an M×N×K product in that precision (e.g. "brg:avx512_core_amx_bf16").
std::string onednn_impl_name(Precision p, int M, int N, int K);
// Whether oneDNN has bf16 kernels on this CPU (AVX512-BF16 or AMX) and may use them
// (DNNL_MAX_CPU_ISA can forbid it); bf16 runs without them only emulated, and is not offered.
bool onednn_has_bf16_kernels();
#endif
#ifdef CHARGPT_HAVE_CUDA
BackendEntry cuda_entry();  // backend_cuda_loader.cpp
#endif

// dbias[OC] += Σ_r dout[r, :] over rows [0, R), in row order (fp32); accumulate = false:
// written (=). The bias gradient of every CPU backend: the same sums in the same order.
inline void bias_grad_rows(float* dbias, const float* dout, int R, int OC) {
  for (int r = 0; r < R; ++r) {
    const float* d = dout + (size_t)r * OC;
    for (int o = 0; o < OC; ++o) dbias[o] += d[o];
  }
}
inline void bias_grad(float* dbias, const float* dout, int R, int OC, bool accumulate) {
  if (!accumulate) std::memset(dbias, 0, sizeof(float) * OC);
  bias_grad_rows(dbias, dout, R, OC);
}

}  // namespace chargpt
