// The oneDNN backend (compiled in with CHARGPT_HAVE_ONEDNN): the linear layers'
// products as oneDNN matmul primitives, in fp32 or in bf16 on AMX tiles.
//
// bf16. The fp32 parameter block stays the master copy; this backend keeps a bf16
// copy of the whole block (same layout), refreshed by weights_changed() for the
// ranges the AdamW chunk loop just wrote (so once per step). Each product's other
// input comes in bf16 when the op that produced it wrote a copy (linear_forward16;
// the weight gradient reuses it), else it is rounded here (nearest even). Products accumulate
// in fp32 and write fp32; the bias add, the bias gradient and the `accumulate`
// sum (post-op sum, one fp32 add) are fp32. Everything outside the products
// (LayerNorm, softmax, the loss, AdamW) is the same fp32 code as ever.
//
// Threads. Every call runs single-threaded on the calling oneTBB worker: Debian's
// oneDNN threads with OpenMP, so each worker sets its own OpenMP thread count to 1
// before its first primitive. Primitives (and a stream and scratch buffers) are
// cached per worker and per shape. A product's arithmetic depends only on its
// shape, so results do not depend on the thread count.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>
#include <tbb/enumerable_thread_specific.h>

#include "backend/backend_impl.h"
#include "base/cpu.h"
#include "base/hash.h"
#include "ops/ops.h"

namespace chargpt {

bool cpu_has_amx_bf16() { return cpu_features().amx(); }

static inline float bf16_to_float(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

namespace {

using dnnl::memory;
using dt = dnnl::memory::data_type;

const char* isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    default: return "other";
  }
}

bool onednn_can_use_amx() { return dnnl::get_effective_cpu_isa() == dnnl::cpu_isa::avx512_core_amx; }

// One product C[M,N] (fp32, row stride ldc) = A[M,K] · B[K,N] (+ bias[N]) (+ sum_scale·C),
// A and B given by their element strides so that transposes cost nothing.
struct Key {
  int M, N, K;
  int64_t as0, as1, bs0, bs1, ldc;
  bool bf16, bias;
  float sum;  // 0: C is written; otherwise C = product + sum·C
  bool operator==(const Key& o) const {
    return M == o.M && N == o.N && K == o.K && as0 == o.as0 && as1 == o.as1 && bs0 == o.bs0 && bs1 == o.bs1 &&
           ldc == o.ldc && bf16 == o.bf16 && bias == o.bias && sum == o.sum;
  }
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    uint32_t s;
    std::memcpy(&s, &k.sum, 4);
    Fnv64Values h;
    h.add(k.M).add(k.N).add(k.K).add(k.as0).add(k.as1).add(k.bs0).add(k.bs1).add(k.ldc);
    h.add(k.bf16).add(k.bias).add(s);
    return (size_t)h.h;
  }
};

struct Prim {
  dnnl::matmul prim;
  memory::desc a, b, bias, c, scratch;
  std::string impl;  // e.g. "brg:avx512_core_amx_bf16"
};

// Per worker thread: its stream, its primitives, its bf16 and scratchpad buffers.
struct Local {
  dnnl::stream strm;
  std::unordered_map<Key, Prim, KeyHash> prims;
  std::vector<uint16_t> a16, b16;
  std::vector<float> x;  // matvec: x rounded to bf16
  std::vector<uint8_t> scratch;
  explicit Local(const dnnl::engine& eng) {
    omp_set_num_threads(1);  // this thread's OpenMP regions: one thread (oneDNN reads it per call)
    strm = dnnl::stream(eng);
  }
};

class OneDnnBackend final : public Backend {
 public:
  explicit OneDnnBackend(Precision p)
      : prec_(p), eng_(dnnl::engine::kind::cpu, 0), locals_([this] { return Local(eng_); }) {}

  std::string name() const override { return std::string("onednn ") + precision_name(prec_); }

  void bind_weights(const float* params, size_t n) override {
    params_ = params;
    n_ = n;
    if (prec_ == Precision::bf16) wb_.assign(n, 0);
    covered_.store(0);
  }
  void weights_changed(size_t begin, size_t end) override {
    if (!params_ || begin > end || end > n_) throw std::logic_error("onednn backend: weights_changed out of range");
    if (prec_ == Precision::bf16) to_bf16(wb_.data() + begin, params_ + begin, end - begin);
    covered_.fetch_add(end - begin);
  }
  size_t weight_syncs() const override { return n_ ? covered_.load() / n_ : 0; }

  bool wants_bf16_inputs() const override { return bf16(); }

  void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int R, int IC,
                      int OC) override {
    linear_forward16(out, inp, nullptr, weight, bias, R, IC, OC);
  }
  void linear_forward16(float* out, const float* inp, const uint16_t* inp16, const float* weight, const float* bias,
                        int R, int IC, int OC) override {
    Local& L = locals_.local();
    // out[R,OC] = inp[R,IC] · Wᵀ: B[k=i, n=o] = W[o*IC + i].
    Key k{R, OC, IC, IC, 1, 1, IC, OC, bf16(), bias != nullptr, 0.f};
    if (bf16()) {
      if (!inp16) {
        to_bf16(grow(L.a16, (size_t)R * IC), inp, (size_t)R * IC);
        inp16 = L.a16.data();
      }
      run(L, k, inp16, weight16(weight, (size_t)OC * IC), bias, out);
    } else {
      run(L, k, inp, weight, bias, out);
    }
  }

  void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, int R, int IC, int OC, bool accumulate) override {
    linear_backward16(dinp, dweight, dbias, dout, inp, nullptr, weight, R, IC, OC, accumulate);
  }
  void linear_backward16(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                         const uint16_t* inp16, const float* weight, int R, int IC, int OC,
                         bool accumulate) override {
    Local& L = locals_.local();
    const float sum = accumulate ? 1.f : 0.f;
    // dinp[R,IC] = dout[R,OC] · W[OC,IC]
    Key kd{R, IC, OC, OC, 1, IC, 1, IC, bf16(), false, 0.f};
    // dW[OC,IC] (+)= doutᵀ · inp: A[m=o, k=r] = dout[r*OC + o].
    Key kw{OC, IC, R, 1, OC, IC, 1, IC, bf16(), false, sum};
    if (bf16()) {
      // dout to bf16 row by row, and the bias gradient from the row while it is in L1 (the
      // same fp32 sums in the same order as the loop below).
      uint16_t* d16 = grow(L.a16, (size_t)R * OC);
      if (dbias && !accumulate) std::memset(dbias, 0, sizeof(float) * OC);
      for (int r = 0; r < R; ++r) {
        const float* d = dout + (size_t)r * OC;
        to_bf16(d16 + (size_t)r * OC, d, (size_t)OC);
        if (dbias)
          for (int o = 0; o < OC; ++o) dbias[o] += d[o];
      }
      if (dinp) run(L, kd, d16, weight16(weight, (size_t)OC * IC), nullptr, dinp);
      if (!inp16) {
        to_bf16(grow(L.b16, (size_t)R * IC), inp, (size_t)R * IC);
        inp16 = L.b16.data();
      }
      run(L, kw, d16, inp16, nullptr, dweight);
    } else {
      if (dinp) run(L, kd, dout, weight, nullptr, dinp);
      run(L, kw, dout, inp, nullptr, dweight);
    }
    if (dbias && !bf16()) {  // fp32, the same loop as the OpenBLAS backend (bf16: done above)
      if (!accumulate) std::memset(dbias, 0, sizeof(float) * OC);
      for (int r = 0; r < R; ++r) {
        const float* d = dout + (size_t)r * OC;
        for (int o = 0; o < OC; ++o) dbias[o] += d[o];
      }
    }
  }

  void matvec_forward(float* out, const float* weight, const float* bias, const float* x, int IC, int row0,
                      int row1) override {
    if (!bf16()) {
      matvec_rows(out, weight, bias, x, IC, row0, row1);
      return;
    }
    // bf16 weights and x, fp32 sums: 16 lanes over i mod 16, then a fixed tree, so each
    // row's arithmetic is the same whatever the range.
    Local& L = locals_.local();
    if (L.x.size() < (size_t)IC) L.x.resize(IC);
    uint16_t* x16 = grow(L.a16, (size_t)IC);
    to_bf16(x16, x, (size_t)IC);
    for (int i = 0; i < IC; ++i) L.x[i] = bf16_to_float(x16[i]);
    const uint16_t* W = weight16(weight, (size_t)row1 * IC);
    for (int o = row0; o < row1; ++o) {
      const uint16_t* w = W + (size_t)o * IC;
      float lane[16] = {};
      int i = 0;
      for (; i + 16 <= IC; i += 16)
        for (int j = 0; j < 16; ++j) lane[j] += bf16_to_float(w[i + j]) * L.x[i + j];
      for (int j = 0; i + j < IC; ++j) lane[j] += bf16_to_float(w[i + j]) * L.x[i + j];
      for (int s = 8; s >= 1; s /= 2)
        for (int j = 0; j < s; ++j) lane[j] += lane[j + s];
      out[o] = bias ? lane[0] + bias[o] : lane[0];
    }
  }

  void gemm(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
            float beta, float* C, int ldc) override {
    Local& L = locals_.local();
    Key k{M, N, K, trans_a ? 1 : lda, trans_a ? lda : 1, trans_b ? 1 : ldb, trans_b ? ldb : 1, ldc, bf16(), false,
          beta};
    if (!bf16()) {
      run(L, k, A, B, nullptr, C);
      return;
    }
    // Convert the stored rectangles (as the linear ops convert their inputs), keep the strides.
    // Rows of A and B as stored (the last row need not be padded to the stride).
    const size_t na = (size_t)((trans_a ? K : M) - 1) * lda + (trans_a ? M : K),
                 nb = (size_t)((trans_b ? N : K) - 1) * ldb + (trans_b ? K : N);
    to_bf16(grow(L.a16, na), A, na);
    to_bf16(grow(L.b16, nb), B, nb);
    run(L, k, L.a16.data(), L.b16.data(), nullptr, C);
  }

  // The implementation oneDNN picks for a product of this shape (tests and `info`).
  std::string impl_name(int M, int N, int K) {
    Key k{M, N, K, K, 1, 1, K, N, bf16(), false, 0.f};
    return prim(locals_.local(), k).impl;
  }

 private:
  bool bf16() const { return prec_ == Precision::bf16; }

  template <class T>
  static T* grow(std::vector<T>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }

  // The bf16 copy of a weight in the bound block.
  const uint16_t* weight16(const float* w, size_t n) const {
    if (!params_ || w < params_ || (size_t)(w - params_) + n > n_)
      throw std::logic_error("onednn bf16 backend: a weight outside the bound parameter block (bind_weights first)");
    return wb_.data() + (w - params_);
  }

  Prim& prim(Local& L, const Key& k) {
    auto it = L.prims.find(k);
    if (it != L.prims.end()) return it->second;
    const dt in = k.bf16 ? dt::bf16 : dt::f32;
    Prim p;
    p.a = memory::desc({k.M, k.K}, in, {k.as0, k.as1});
    p.b = memory::desc({k.K, k.N}, in, {k.bs0, k.bs1});
    p.c = memory::desc({k.M, k.N}, dt::f32, {k.ldc, 1});
    if (k.bias) p.bias = memory::desc({1, k.N}, dt::f32, {k.N, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (k.sum != 0.f) {
      dnnl::post_ops po;
      po.append_sum(k.sum);
      attr.set_post_ops(po);
    }
    dnnl::matmul::desc d = k.bias ? dnnl::matmul::desc(p.a, p.b, p.bias, p.c) : dnnl::matmul::desc(p.a, p.b, p.c);
    dnnl::matmul::primitive_desc pd(d, attr, eng_);
    p.scratch = pd.scratchpad_desc();
    p.impl = pd.impl_info_str();
    p.prim = dnnl::matmul(pd);
    return L.prims.emplace(k, std::move(p)).first->second;
  }

  void run(Local& L, const Key& k, const void* A, const void* B, const float* bias, float* C) {
    Prim& p = prim(L, k);
    uint8_t* scratch = grow(L.scratch, std::max<size_t>(p.scratch.get_size(), 1));
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(p.a, eng_, const_cast<void*>(A))},
        {DNNL_ARG_WEIGHTS, memory(p.b, eng_, const_cast<void*>(B))},
        {DNNL_ARG_DST, memory(p.c, eng_, C)},
        {DNNL_ARG_SCRATCHPAD, memory(p.scratch, eng_, scratch)}};
    if (k.bias) args.emplace(DNNL_ARG_BIAS, memory(p.bias, eng_, const_cast<float*>(bias)));
    p.prim.execute(L.strm, args);
    L.strm.wait();
  }

  Precision prec_;
  dnnl::engine eng_;
  tbb::enumerable_thread_specific<Local> locals_;
  const float* params_ = nullptr;
  size_t n_ = 0;
  std::vector<uint16_t> wb_;  // bf16 copy of the bound block (bf16 only)
  std::atomic<size_t> covered_{0};  // floats passed to weights_changed since bind_weights
};

}  // namespace

std::unique_ptr<Backend> make_onednn_backend(const BackendOptions& opt) {
  if (opt.precision == Precision::bf16) {
    if (!cpu_has_amx_bf16())
      throw std::runtime_error(
          "--precision bf16 needs a CPU with AMX (amx_bf16, CPUID leaf 7 EDX bit 22) and this one has none; "
          "without AMX, bf16 products are slower than fp32 here: use --precision fp32");
    if (!onednn_can_use_amx())
      throw std::runtime_error(std::string("--precision bf16: the CPU has AMX but oneDNN cannot use it (its ISA is ") +
                               isa_name(dnnl::get_effective_cpu_isa()) +
                               ": DNNL_MAX_CPU_ISA set lower, or the kernel refused AMX); use --precision fp32");
  }
  return std::make_unique<OneDnnBackend>(opt.precision);
}

std::string onednn_impl_name(Precision p, int M, int N, int K) {
  OneDnnBackend be(p);
  return be.impl_name(M, N, K);
}

std::string onednn_info() {
  const dnnl_version_t* v = dnnl::version();
  std::string s = "onednn: " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                  std::to_string(v->patch) + " (isa " + isa_name(dnnl::get_effective_cpu_isa()) + ", cpu amx_bf16 " +
                  (cpu_has_amx_bf16() ? "yes" : "no") + ")";
  if (cpu_has_amx_bf16() && onednn_can_use_amx())
    s += "\nonednn bf16 matmul: " + onednn_impl_name(Precision::bf16, 128, 384, 128);
  return s;
}

}  // namespace chargpt
