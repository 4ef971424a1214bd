// The CUDA row of the registry: loads the CUDA module (libchargpt_cuda.so,
// see cuda_module.h) on first use, so that a run that never asks for CUDA never
// loads the CUDA runtime or cuBLAS. The module is looked for beside the running
// executable, then in ../lib/chargpt/ from it (the installed layout), then on the
// loader's search path. It stays loaded until exit
// (CUDA libraries must not be unloaded while the process may still use them).
#include <dlfcn.h>

#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <string>

#include "backend/backend_impl.h"
#include "backend/cuda_module.h"

namespace chargpt {

namespace {

struct CudaModule {
  chargpt_cuda_open_fn open = nullptr;
  chargpt_cuda_info_fn info = nullptr;
  std::string error;  // why it could not be loaded
};

const CudaModule& cuda_module() {
  static const CudaModule m = [] {
    CudaModule r;
    std::string tried;
    void* h = nullptr;
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    // Beside the executable (the build tree), then where `cmake --install` puts it (P/bin → P/lib/chargpt).
    for (const char* dir : {".", "../lib/chargpt"}) {
      if (ec || h) break;
      const std::string path = (exe.parent_path() / dir / CHARGPT_CUDA_MODULE).string();
      h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!h) tried += (tried.empty() ? "" : "; ") + std::string(dlerror());
    }
    if (!h) {
      h = dlopen(CHARGPT_CUDA_MODULE, RTLD_NOW | RTLD_LOCAL);
      if (!h) {
        const char* e = dlerror();
        r.error = (tried.empty() ? std::string() : tried + "; ") + (e ? e : "dlopen failed");
        return r;
      }
    }
    r.open = reinterpret_cast<chargpt_cuda_open_fn>(dlsym(h, CHARGPT_CUDA_OPEN));
    r.info = reinterpret_cast<chargpt_cuda_info_fn>(dlsym(h, CHARGPT_CUDA_INFO));
    if (!r.open || !r.info) {
      r.open = nullptr, r.info = nullptr;
      r.error = std::string(CHARGPT_CUDA_MODULE) + " lacks " CHARGPT_CUDA_OPEN " or " CHARGPT_CUDA_INFO;
    }
    return r;
  }();
  return m;
}

std::string cuda_unavailable(const BackendOptions&) {
  const CudaModule& m = cuda_module();
  if (!m.open) return "--backend cuda: cannot load the CUDA module " CHARGPT_CUDA_MODULE ": " + m.error;
  return "";
}

// Throws "no CUDA device: ..." without a usable GPU.
std::unique_ptr<Backend> make_cuda(const BackendOptions& opt) {
  DeviceTuning tuning = device_tuning_from_env();  // CHARGPT_CUDA_* (device_backend.h)
  tuning.bf16 = opt.precision == Precision::bf16;
  std::string why;
  std::unique_ptr<Device> dev(cuda_module().open(opt.tf32, tuning.bf16, &why));
  if (!dev) throw std::runtime_error("no CUDA device: " + why + " (--backend cuda needs an NVIDIA GPU and driver)");
  return make_device_backend(std::move(dev), tuning);
}

// "cuda: compiled in (runtime X, cuBLAS Y); devices: ..." (the GPUs, or none and why).
std::string cuda_info() {
  const CudaModule& m = cuda_module();
  if (!m.info) return "cuda: compiled in, but the module " CHARGPT_CUDA_MODULE " cannot be loaded: " + m.error;
  std::string s;
  m.info(&s);
  return s;
}

}  // namespace

BackendEntry cuda_entry() {
  return {BackendKind::cuda, "cuda", precision_bit(Precision::fp32) | precision_bit(Precision::bf16), true,
          cuda_unavailable, make_cuda, cuda_info};
}

}  // namespace chargpt
