#pragma once
// Factories of the backends (each in its own file, compiled in by a CMake option).
#include <memory>
#include <string>

#include "chargpt/backend.h"

namespace chargpt {

std::unique_ptr<Backend> make_openblas_backend(const BackendOptions& opt);  // backend_openblas.cpp
std::string openblas_info();                                                // backend_openblas.cpp
#ifdef CHARGPT_HAVE_CUDA
// Throws "no CUDA device: ..." without a usable GPU.
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& opt);  // backend_cuda.cpp
// "cuda: compiled in (runtime X, cuBLAS Y); devices: ..." (the GPUs, or none and why).
std::string cuda_info();  // backend_cuda.cpp
#endif

}  // namespace chargpt
