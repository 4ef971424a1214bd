#pragma once
// Factories of the backends (each in its own file, compiled in by a CMake option).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "backend/backend.h"

namespace chargpt {

std::unique_ptr<Backend> make_openblas_backend(const BackendOptions& opt);  // backend_openblas.cpp
std::string openblas_info();                                                // backend_openblas.cpp
#ifdef CHARGPT_HAVE_CUDA
// Throws "no CUDA device: ..." without a usable GPU.
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& opt);  // backend_cuda.cpp
// "cuda: compiled in (runtime X, cuBLAS Y); devices: ..." (the GPUs, or none and why).
std::string cuda_info();  // backend_cuda.cpp
#endif

#ifdef CHARGPT_HAVE_ONEDNN
std::unique_ptr<Backend> make_onednn_backend(const BackendOptions& opt);  // backend_onednn.cpp
std::string onednn_info();  // version, the ISA oneDNN uses, whether the CPU has AMX-BF16
// The implementation oneDNN picks for an M×N×K product in that precision (e.g. "brg:avx512_core_amx_bf16").
std::string onednn_impl_name(Precision p, int M, int N, int K);
bool cpu_has_amx_bf16();  // CPUID leaf 7: AMX-BF16 and AMX-TILE
#endif

}  // namespace chargpt
