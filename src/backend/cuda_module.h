#pragma once
// The entry points of the CUDA module (libchargpt_cuda.so, built from
// backend_cuda.cpp, the only code that calls CUDA), which backend_cuda_loader.cpp
// loads with dlopen the first time the CUDA backend or its info is asked for.
// Both sides are built together from this header, by the same compiler and
// against the same libstdc++, so C++ types and exceptions cross the boundary.
#include <string>

#include "backend/device_backend.h"

extern "C" {
// This process's device (choose_device: by the local rank under a launcher) as
// a chargpt::Device (tf32: allow TF32 for the fp32 products; bf16: the name says
// bf16 products), or null with the reason there is none in *why
// (no_device_reason). Throws on a CUDA error after a device was found.
using chargpt_cuda_open_fn = chargpt::Device* (*)(bool tf32, bool bf16, std::string* why);
// "cuda: compiled in (runtime X, cuBLAS Y); driver: CUDA Z; devices: ...; this process uses device N (why)" into *out.
using chargpt_cuda_info_fn = void (*)(std::string* out);
}

#define CHARGPT_CUDA_OPEN "chargpt_cuda_open"
#define CHARGPT_CUDA_INFO "chargpt_cuda_info"
