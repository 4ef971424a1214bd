// Backend selection and the build/machine report; the backends themselves are
// in backend_*.cpp.
#include <stdexcept>
#include <string>

#include "backend/backend_impl.h"

namespace chargpt {

const char* backend_name(BackendKind kind) {
  switch (kind) {
    case BackendKind::openblas: return "openblas";
    case BackendKind::onednn: return "onednn";
    case BackendKind::cuda: return "cuda";
  }
  return "?";
}

const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

BackendKind parse_backend(const std::string& s) {
  if (s == "openblas") return BackendKind::openblas;
  if (s == "onednn") return BackendKind::onednn;
  if (s == "cuda") return BackendKind::cuda;
  throw std::invalid_argument("backend '" + s + "' is not one of: openblas, onednn, cuda");
}

Precision parse_precision(const std::string& s) {
  if (s == "fp32") return Precision::fp32;
  if (s == "bf16") return Precision::bf16;
  throw std::invalid_argument("precision '" + s + "' is not one of: fp32, bf16");
}

std::unique_ptr<Backend> make_backend(const BackendOptions& opt) {
  switch (opt.kind) {
    case BackendKind::openblas:
      if (opt.precision != Precision::fp32)
        throw std::runtime_error(std::string("--precision ") + precision_name(opt.precision) +
                                 " needs --backend onednn (OpenBLAS runs fp32 only)");
      return make_openblas_backend(opt);
    case BackendKind::onednn:
#ifdef CHARGPT_HAVE_ONEDNN
      return make_onednn_backend(opt);
#else
      throw std::runtime_error("--backend onednn: this build has no oneDNN (configure with -DCHARGPT_ONEDNN=ON)");
#endif
    case BackendKind::cuda:
#ifdef CHARGPT_HAVE_CUDA
      return make_cuda_backend(opt);
#else
      throw std::runtime_error("--backend cuda: this build has no CUDA (configure with -DCHARGPT_CUDA=ON)");
#endif
  }
  throw std::logic_error("make_backend: unknown backend");
}

Backend& cpu_backend() {
  static const std::unique_ptr<Backend> fp32 = make_openblas_backend({});
  return *fp32;
}

std::string backend_info() {
  std::string s = "backends: openblas";
#ifdef CHARGPT_HAVE_ONEDNN
  s += ", onednn";
#endif
#ifdef CHARGPT_HAVE_CUDA
  s += ", cuda";
#endif
  s += "\n" + openblas_info();
#ifdef CHARGPT_HAVE_ONEDNN
  s += "\n" + onednn_info();
#else
  s += "\nonednn: not compiled in (configure with -DCHARGPT_ONEDNN=ON)";
#endif
#ifdef CHARGPT_HAVE_CUDA
  s += "\n" + cuda_info();
#else
  s += "\ncuda: not compiled in (configure with -DCHARGPT_CUDA=ON)";
#endif
  return s;
}

}  // namespace chargpt
