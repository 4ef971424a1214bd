#pragma once
// The one door for the model's matrix products. Every linear layer of the
// model (forward and backward), the KV-cache step's matrix-vector products and
// the bench's FLOP-rate measurement go through a Backend; no other file calls
// a BLAS library. OpenBLAS fp32 is the default and the reference.
//
// A backend is stateful: it may keep its own copy of the weights (bf16, or on
// a GPU). The engine binds it to the parameter block once, and tells it which
// range of the block changed after every write of the weights (the AdamW chunk
// loop, init, a resume), so that a copy is refreshed once per optimizer step,
// never per call. A linear op's `weight` pointer always points into the bound
// block (or a block of the same layout for gradients), so `weight - params`
// names the tensor. Calls come from several oneTBB workers at once; a backend
// keeps any per-call state per thread.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace chargpt {

enum class BackendKind { openblas, onednn, cuda };
enum class Precision { fp32, bf16 };

struct BackendOptions {
  BackendKind kind = BackendKind::openblas;
  Precision precision = Precision::fp32;
  bool tf32 = false;  // CUDA only: allow TF32 tensor cores for fp32 products
};

const char* backend_name(BackendKind kind);
const char* precision_name(Precision p);
// Parses "openblas" | "onednn" | "cuda" and "fp32" | "bf16"; throws std::invalid_argument naming the value.
BackendKind parse_backend(const std::string& s);
Precision parse_precision(const std::string& s);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // e.g. "openblas fp32"

  // The parameter block (n floats) the linear weights point into. Until bound,
  // a backend that keeps its own copy of the weights cannot run.
  virtual void bind_weights(const float* params, size_t n) { (void)params, (void)n; }
  // Floats [begin, end) of the bound block changed. Called for disjoint ranges
  // from several threads at once (the AdamW chunk loop).
  virtual void weights_changed(size_t begin, size_t end) { (void)begin, (void)end; }
  // How many times weights_changed covered the whole block (tests: the upload schedule).
  virtual size_t weight_syncs() const { return 0; }

  // out[R,OC] = inp[R,IC] · weight[OC,IC]ᵀ + bias[OC] (bias may be null).
  virtual void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int R, int IC,
                              int OC) = 0;
  // dinp[R,IC] = dout · weight (skipped if null); dweight[OC,IC] += doutᵀ · inp; dbias[OC] += Σ_r dout
  // (if non-null). accumulate = false: dweight and dbias are written (=) instead.
  virtual void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                               const float* weight, int R, int IC, int OC, bool accumulate) = 0;
  // bf16 copies of the activations. A backend whose products read their activation input in
  // bf16 says so here; the model then has the op that produces such an input write a bf16
  // copy too (inp16 = to_bf16(inp), ops.h: the same bits the backend would compute), and hands
  // it over through the two calls below, so the backend converts nothing per call and the
  // forward's copy serves the backward's weight gradient as well. Their defaults ignore inp16.
  virtual bool wants_bf16_inputs() const { return false; }
  // linear_forward, with inp16 (may be null) = to_bf16(inp[R,IC]).
  virtual void linear_forward16(float* out, const float* inp, const uint16_t* inp16, const float* weight,
                                const float* bias, int R, int IC, int OC) {
    (void)inp16;
    linear_forward(out, inp, weight, bias, R, IC, OC);
  }
  // linear_backward, with inp16 (may be null) = to_bf16(inp[R,IC]).
  virtual void linear_backward16(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                 const uint16_t* inp16, const float* weight, int R, int IC, int OC, bool accumulate) {
    (void)inp16;
    linear_backward(dinp, dweight, dbias, dout, inp, weight, R, IC, OC, accumulate);
  }
  // Rows [row0, row1) of out[OC] = weight[OC,IC] · x[IC] + bias[OC] (bias may be null): the KV-cache step.
  // Each row is computed by the same arithmetic whatever the range, so splitting rows over threads changes
  // no result.
  virtual void matvec_forward(float* out, const float* weight, const float* bias, const float* x, int IC, int row0,
                              int row1) = 0;
  // C[M,N] = op(A)·op(B) + beta·C on host fp32 arrays, row-major, row strides lda/ldb/ldc: for
  // measuring the backend's own product rate (bench MFU), in its own precision.
  virtual void gemm(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                    float beta, float* C, int ldc) = 0;
};

// A backend of the given kind; throws std::runtime_error saying why when it is
// not compiled in or cannot run here (no AMX, no CUDA device).
std::unique_ptr<Backend> make_backend(const BackendOptions& opt = {});

// The OpenBLAS fp32 backend, shared: stateless, for callers that use the fp32
// reference path (tests, the uncached sampler).
Backend& cpu_backend();

// What the build and the machine offer, one "key: value" per line: backends
// compiled in, BLAS configuration, the CPU's ISA.
std::string backend_info();

// The kernel family the BLAS library picked for this CPU (OpenBLAS's core name).
std::string blas_core_name();

// OpenBLAS reads its settings when it loads. Sets OPENBLAS_NUM_THREADS=1 (our
// threads are oneTBB's) and, on AVX-512 CPUs Debian's OpenBLAS misdetects, a
// better OPENBLAS_CORETYPE, unless the user set them; returns true if the
// environment changed, so that main re-executes itself once.
bool configure_blas_environment();

}  // namespace chargpt
