// The OpenBLAS fp32 backend: the default and the reference. The only file
// that calls OpenBLAS. sgemm runs single-threaded inside our oneTBB tasks.
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>

#include <cblas.h>

#include "backend/backend_impl.h"
#include "base/cpu.h"
#include "ops/ops.h"

namespace chargpt {

namespace {

void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
           int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
              alpha, A, lda, B, ldb, beta, C, ldc);
}

// OpenBLAS must not spawn threads of its own: parallelism is ours (oneTBB).
// Once per process, before the first product.
void blas_single_threaded() {
  static const bool once = (openblas_set_num_threads(1), true);
  (void)once;
}

// The fp32 products on the host floats of the weights (their tensor index is not needed).
class OpenBlasBackend final : public Backend {
 public:
  OpenBlasBackend() { blas_single_threaded(); }
  std::string name() const override { return "openblas fp32"; }
  void linear_forward(float* out, LinearInput inp, Weight weight, Weight bias, int R, int IC, int OC) override {
    if (bias.data) {
      for (int r = 0; r < R; ++r) std::memcpy(out + (size_t)r * OC, bias.data, sizeof(float) * OC);
    }
    sgemm(false, true, R, OC, IC, 1.f, inp.f32, IC, weight.data, IC, bias.data ? 1.f : 0.f, out, OC);
  }
  void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, LinearInput inp, Weight weight,
                       int R, int IC, int OC, bool accumulate) override {
    if (dinp) sgemm(false, false, R, IC, OC, 1.f, dout, OC, weight.data, IC, 0.f, dinp, IC);
    if (!dweight) return;
    sgemm(true, false, OC, IC, R, 1.f, dout, OC, inp.f32, IC, accumulate ? 1.f : 0.f, dweight, IC);
    if (dbias) bias_grad(dbias, dout, R, OC, accumulate);
  }
  void matvec_forward(float* out, Weight weight, Weight bias, const float* x, int IC, int row0, int row1) override {
    matvec_rows(out, weight.data, bias.data, x, IC, row0, row1);
  }
};

std::unique_ptr<Backend> make_openblas(const BackendOptions&) { return std::make_unique<OpenBlasBackend>(); }

std::string openblas_available(const BackendOptions&) { return ""; }

std::string openblas_info() {
  std::string s = "blas: ";  // the config string starts with "OpenBLAS <version>"
  s += openblas_get_config();
  s += " (core ";
  s += openblas_get_corename();
  s += ")";
  return s;
}

}  // namespace

BackendEntry openblas_entry() {
  return {BackendKind::openblas, "openblas", precision_bit(Precision::fp32), false, openblas_available, make_openblas,
          openblas_info};
}

std::string blas_core_name() { return openblas_get_corename(); }

// Any AVX-512 (F+BW) CPU this OpenBLAS does not name SkylakeX gets its SkylakeX kernels:
// 0.3.21 calls Zen 4 "Zen" and Sapphire Rapids "Haswell" or "Cooperlake", and a virtual
// machine whose CPUID hides the model (a generic "Intel Xeon Processor") "Prescott", whose
// SSE3 kernels ran the bench's sgemm at 18 GFLOP/s a core there.
std::string openblas_coretype_override(const CpuFeatures& cpu, const std::string& core_name) {
  std::string core = core_name;
  for (char& c : core) c = (char)std::tolower((unsigned char)c);
  return cpu.avx512f && cpu.avx512bw && core != "skylakex" ? "SKYLAKEX" : "";
}

// Why: OpenBLAS reads OPENBLAS_NUM_THREADS when it loads and then starts a
// thread per core that spins for a while even after openblas_set_num_threads(1),
// stealing cores from our workers. Debian 12's OpenBLAS 0.3.21 does not know
// Sapphire Rapids or Zen 4 and falls back to its AVX2 Haswell kernel (70
// GFLOP/s on one core of our CI machine against 112 for SkylakeX's).
bool configure_blas_environment() {
  bool changed = false;
  if (!std::getenv("OPENBLAS_NUM_THREADS")) {
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    changed = true;
  }
  if (!std::getenv("OPENBLAS_CORETYPE")) {
    const std::string core = openblas_coretype_override(cpu_features(), openblas_get_corename());
    if (!core.empty()) {
      setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
      changed = true;
    }
  }
  return changed;
}

}  // namespace chargpt
