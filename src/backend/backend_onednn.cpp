// The oneDNN backend (compiled in with CHARGPT_HAVE_ONEDNN): the linear layers'
// products as oneDNN matmul primitives, in fp32 or in bf16 (AVX512-BF16 or AMX tiles).
//
// bf16. The fp32 parameter block stays the master copy; this backend keeps a bf16
// copy of the whole block (same layout), refreshed by weights_changed() for the
// ranges the AdamW chunk loop just wrote (so once per step). A product's activation
// input comes with its bf16 copy from the model (LinearInput::bf16, written by the op
// that produced it); without one it is rounded here (round to nearest even), as is
// the backward's dout. Products accumulate
// in fp32 and write fp32; the bias add, the bias gradient and the `accumulate`
// sum (post-op sum, one fp32 add) are fp32. Everything outside the products
// (LayerNorm, softmax, the loss, AdamW) is the same fp32 code as ever.
//
// Packed weights. A product whose B operand is a weight of the bound table (the
// forward's Wᵀ, the backward's W for dinp) takes it in the layout oneDNN picks for that
// product (format_tag::any): the weight is reordered into it once after each write
// (weights_changed marks the tensor stale, the first product that needs it packs it),
// and every product of the step reads the packed copy instead of repacking per call.
// Packing is a copy, and the packed-layout primitive is the same kernel, so the bits
// are those of the per-call packing.
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
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>
#include <tbb/enumerable_thread_specific.h>

#include "backend/backend_impl.h"
#include "base/cpu.h"
#include "base/hash.h"
#include "ops/lane_dot.h"
#include "ops/ops.h"

namespace chargpt {

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

// One product C[M,N] (fp32, row stride ldc) = A[M,K] · B[K,N] (+ bias[N]) (+ sum_scale·C),
// A and B given by their element strides so that transposes cost nothing.
struct Key {
  int M, N, K;
  int64_t as0, as1, bs0, bs1, ldc;
  bool bf16, bias;
  float sum;  // 0: C is written; otherwise C = product + sum·C
  bool packed_b = false;  // B is a weight, read in the layout oneDNN picks (packed once per step)
  bool operator==(const Key& o) const {
    return M == o.M && N == o.N && K == o.K && as0 == o.as0 && as1 == o.as1 && bs0 == o.bs0 && bs1 == o.bs1 &&
           ldc == o.ldc && bf16 == o.bf16 && bias == o.bias && sum == o.sum && packed_b == o.packed_b;
  }
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    uint32_t s;
    std::memcpy(&s, &k.sum, 4);
    Fnv64Values h;
    h.add(k.M).add(k.N).add(k.K).add(k.as0).add(k.as1).add(k.bs0).add(k.bs1).add(k.ldc);
    h.add(k.bf16).add(k.bias).add(s).add(k.packed_b);
    return (size_t)h.h;
  }
};

struct Prim {
  dnnl::matmul prim;
  memory::desc a, b, bias, c, scratch;
  memory::desc b_plain;  // B as the caller holds it (b is its packed layout when Key::packed_b)
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

  void bind_weights(const WeightTable& table) override {
    table_ = table;
    if (bf16()) wb_.assign(table.floats, 0);
    const size_t n = table.tensors.size();
    packs_.clear();
    packs_.resize(n);
    stale_ = std::make_unique<std::atomic<uint64_t>[]>(n);
    changed_ = std::make_unique<std::atomic<uint64_t>[]>(n);
    for (size_t t = 0; t < n; ++t) stale_[t].store(1, std::memory_order_relaxed);
  }
  void weights_changed(size_t begin, size_t end) override {
    if (!table_.block || begin > end || end > table_.floats)
      throw std::logic_error("onednn backend: weights_changed out of range");
    if (bf16()) to_bf16(wb_.data() + begin, table_.block + begin, end - begin);
    // Every tensor the range touches is repacked at its next use, or here, by the call that
    // completes a whole tensor's update: the AdamW chunk loop then packs the tensors in
    // parallel, instead of the step's first products packing them while other threads wait.
    for (size_t t = 0; t < table_.tensors.size(); ++t) {
      const TensorSlot& s = table_.tensors[t];
      if (!(s.offset < end && begin < s.offset + s.numel)) continue;
      stale_[t].fetch_add(1, std::memory_order_acq_rel);
      const uint64_t overlap = std::min(end, s.offset + s.numel) - std::max(begin, s.offset);
      if ((changed_[t].fetch_add(overlap, std::memory_order_acq_rel) + overlap) % s.numel == 0) repack(t);
    }
  }

  bool wants_bf16_inputs() const override { return bf16(); }

  void linear_forward(float* out, LinearInput inp, Weight weight, Weight bias, int R, int IC, int OC) override {
    Local& L = locals_.local();
    // out[R,OC] = inp[R,IC] · Wᵀ: B[k=i, n=o] = W[o*IC + i].
    Key k{R, OC, IC, IC, 1, 1, IC, OC, bf16(), bias.data != nullptr, 0.f, packable(weight)};
    const void* A = bf16() ? (const void*)input16(L.a16, inp, (size_t)R * IC) : inp.f32;
    run(L, k, A, weight_operand(weight, (size_t)OC * IC), bias.data, out, weight);
  }

  void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, LinearInput inp, Weight weight,
                       int R, int IC, int OC, bool accumulate) override {
    Local& L = locals_.local();
    if (!dweight) dbias = nullptr;  // dinp only
    const float sum = accumulate ? 1.f : 0.f;
    // dinp[R,IC] = dout[R,OC] · W[OC,IC]
    Key kd{R, IC, OC, OC, 1, IC, 1, IC, bf16(), false, 0.f, packable(weight)};
    // dW[OC,IC] (+)= doutᵀ · inp: A[m=o, k=r] = dout[r*OC + o].
    Key kw{OC, IC, R, 1, OC, IC, 1, IC, bf16(), false, sum};
    if (bf16()) {
      // dout to bf16 row by row, and the bias gradient from the row while it is in L1 (the
      // same fp32 sums in the same order as bias_grad).
      uint16_t* d16 = grow(L.a16, (size_t)R * OC);
      if (dbias && !accumulate) std::memset(dbias, 0, sizeof(float) * OC);
      for (int r = 0; r < R; ++r) {
        const float* d = dout + (size_t)r * OC;
        to_bf16(d16 + (size_t)r * OC, d, (size_t)OC);
        if (dbias) bias_grad_rows(dbias, d, 1, OC);
      }
      if (dinp) run(L, kd, d16, weight16(weight, (size_t)OC * IC), nullptr, dinp, weight);
      if (dweight) run(L, kw, d16, input16(L.b16, inp, (size_t)R * IC), nullptr, dweight);
    } else {
      if (dinp) run(L, kd, dout, weight_operand(weight, (size_t)OC * IC), nullptr, dinp, weight);
      if (dweight) run(L, kw, dout, inp.f32, nullptr, dweight);
      if (dbias) bias_grad(dbias, dout, R, OC, accumulate);
    }
  }

  void matvec_forward(float* out, Weight weight, Weight bias, const float* x, int IC, int row0, int row1) override {
    if (!bf16()) {
      matvec_rows(out, weight.data, bias.data, x, IC, row0, row1);
      return;
    }
    // bf16 weights and x, fp32 sums (lane_dot.h), so each row's arithmetic is the same
    // whatever the range.
    Local& L = locals_.local();
    if (L.x.size() < (size_t)IC) L.x.resize(IC);
    uint16_t* x16 = grow(L.a16, (size_t)IC);
    to_bf16(x16, x, (size_t)IC);
    for (int i = 0; i < IC; ++i) L.x[i] = bf16_to_float(x16[i]);
    const uint16_t* W = weight16(weight, (size_t)row1 * IC);
    for (int o = row0; o < row1; ++o) {
      const float dot = lane_dot(W + (size_t)o * IC, L.x.data(), IC);
      out[o] = bias.data ? dot + bias.data[o] : dot;
    }
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

  // The bf16 copy of a weight of the bound table.
  const uint16_t* weight16(const Weight& w, size_t n) const { return wb_.data() + table_.offset_of(w, n); }
  // A product's weight as the caller holds it: the bf16 copy, or the host floats (checked
  // to be the named tensor's when it will be packed).
  const void* weight_operand(const Weight& w, size_t n) const {
    if (bf16()) return weight16(w, n);
    if (packable(w)) (void)table_.offset_of(w, n);
    return w.data;
  }
  // Whether a weight is packed once per step: it is a tensor of the bound table, whose
  // writes weights_changed reports.
  bool packable(const Weight& w) const { return table_.block && w.tensor >= 0; }

  // One weight packed into the layout `packed` of a primitive that reads it as `plain`.
  struct Packed {
    memory::desc plain, packed;
    memory mem;                       // owns the packed bytes
    std::atomic<uint64_t> version{0};  // the stale_ count it was packed at (0: never)
    std::mutex m;
  };

  // The packed copy of weight w for primitive p (B at `plain`): packed by the first call
  // after the tensor changed, read by every other.
  const void* packed_weight(Local& L, const Prim& p, const Weight& w, const void* plain) {
    Packed* pk = nullptr;
    {
      std::lock_guard<std::mutex> g(packs_mu_);
      for (auto& e : packs_.at((size_t)w.tensor))
        if (e->packed == p.b && e->plain == p.b_plain) pk = e.get();
      if (!pk) {
        packs_[(size_t)w.tensor].push_back(std::make_unique<Packed>());
        pk = packs_[(size_t)w.tensor].back().get();
        pk->plain = p.b_plain, pk->packed = p.b, pk->mem = memory(p.b, eng_);
      }
    }
    pack(L, *pk, plain, stale_[(size_t)w.tensor].load(std::memory_order_acquire));
    return pk->mem.get_data_handle();
  }

  // Tensor t's every packed layout made so far, packed again from its current floats.
  void repack(size_t t) {
    std::vector<Packed*> layouts;
    {
      std::lock_guard<std::mutex> g(packs_mu_);
      for (auto& e : packs_[t]) layouts.push_back(e.get());
    }
    if (layouts.empty()) return;
    const size_t off = table_.tensors[t].offset;
    const void* plain = bf16() ? (const void*)(wb_.data() + off) : (const void*)(table_.block + off);
    Local& L = locals_.local();
    for (Packed* pk : layouts) pack(L, *pk, plain, stale_[t].load(std::memory_order_acquire));
  }
  // pk packed from `plain` at tensor version `version`, unless it already is.
  void pack(Local& L, Packed& pk, const void* plain, uint64_t version) {
    if (pk.version.load(std::memory_order_acquire) == version) return;
    std::lock_guard<std::mutex> g(pk.m);
    if (pk.version.load(std::memory_order_relaxed) == version) return;
    memory src(pk.plain, eng_, const_cast<void*>(plain));
    dnnl::reorder(src, pk.mem).execute(L.strm, src, pk.mem);
    L.strm.wait();
    pk.version.store(version, std::memory_order_release);
  }

  // The bf16 activation input: the model's copy, or n floats rounded into buf.
  static const uint16_t* input16(std::vector<uint16_t>& buf, const LinearInput& in, size_t n) {
    if (in.bf16) return in.bf16;
    to_bf16(grow(buf, n), in.f32, n);
    return buf.data();
  }

  Prim& prim(Local& L, const Key& k) {
    auto it = L.prims.find(k);
    if (it != L.prims.end()) return it->second;
    const dt in = k.bf16 ? dt::bf16 : dt::f32;
    Prim p;
    p.a = memory::desc({k.M, k.K}, in, {k.as0, k.as1});
    p.b_plain = memory::desc({k.K, k.N}, in, {k.bs0, k.bs1});
    p.b = k.packed_b ? memory::desc({k.K, k.N}, in, memory::format_tag::any) : p.b_plain;
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
    p.b = pd.weights_desc();
    p.impl = pd.impl_info_str();
    p.prim = dnnl::matmul(pd);
    return L.prims.emplace(k, std::move(p)).first->second;
  }

  // w: the weight B is, when k.packed_b (B is then its plain form, packed here).
  void run(Local& L, const Key& k, const void* A, const void* B, const float* bias, float* C,
           const Weight& w = {}) {
    Prim& p = prim(L, k);
    if (k.packed_b && p.b != p.b_plain) B = packed_weight(L, p, w, B);
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
  WeightTable table_;
  std::vector<uint16_t> wb_;  // bf16 copy of the bound block (bf16 only)
  std::mutex packs_mu_;        // guards the lists in packs_ (not the packed bytes)
  std::vector<std::vector<std::unique_ptr<Packed>>> packs_;  // per tensor: its packed layouts
  std::unique_ptr<std::atomic<uint64_t>[]> stale_;          // per tensor: counts its changes, from 1
  std::unique_ptr<std::atomic<uint64_t>[]> changed_;        // per tensor: floats reported changed
};

std::unique_ptr<Backend> make_onednn(const BackendOptions& opt) { return std::make_unique<OneDnnBackend>(opt.precision); }

// bf16 is offered where oneDNN has bf16 kernels for this CPU (AVX512-BF16 or AMX-BF16):
// without them it would emulate bf16, slower than fp32.
std::string onednn_unavailable(const BackendOptions& opt) {
  if (opt.precision != Precision::bf16) return "";
  if (std::string missing = bf16_cpu_missing(cpu_features()); !missing.empty()) return missing;
  if (!onednn_has_bf16_kernels())
    return std::string("--precision bf16: the CPU has ") + (cpu_features().amx() ? "AMX-BF16" : "AVX512-BF16") +
           " but oneDNN cannot use it (its ISA is " + isa_name(dnnl::get_effective_cpu_isa()) +
           ": DNNL_MAX_CPU_ISA set lower, or the kernel refused AMX); use --precision fp32";
  return "";
}

std::string onednn_info() {
  const dnnl_version_t* v = dnnl::version();
  std::string s = "onednn: " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                  std::to_string(v->patch) + " (isa " + isa_name(dnnl::get_effective_cpu_isa()) + ", cpu amx_bf16 " +
                  (cpu_features().amx() ? "yes" : "no") + ", avx512_bf16 " + (cpu_features().avx512_bf16 ? "yes" : "no") +
                  ")";
  if (onednn_has_bf16_kernels())
    s += "\nonednn bf16 matmul: " + onednn_impl_name(Precision::bf16, 128, 384, 128);
  return s;
}

}  // namespace

BackendEntry onednn_entry() {
  return {BackendKind::onednn, "onednn", precision_bit(Precision::fp32) | precision_bit(Precision::bf16), false,
          onednn_unavailable, make_onednn, onednn_info};
}

bool onednn_has_bf16_kernels() {
  // oneDNN's ISA values are nested bit sets: every ISA from avx512_core_bf16 up (AMX included) holds its bits.
  const auto isa = (unsigned)dnnl::get_effective_cpu_isa(), bf16 = (unsigned)dnnl::cpu_isa::avx512_core_bf16;
  return (isa & bf16) == bf16;
}

std::string onednn_impl_name(Precision p, int M, int N, int K) {
  OneDnnBackend be(p);
  return be.impl_name(M, N, K);
}

}  // namespace chargpt
