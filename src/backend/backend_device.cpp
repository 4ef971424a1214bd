// The device-generic backend (device_backend.h) and the pure parts of the CUDA
// path (cuda_mapping.h). No CUDA here: backend_cuda.cpp supplies the device.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <tbb/enumerable_thread_specific.h>

#include "backend/cuda_mapping.h"
#include "backend/device_backend.h"
#include "ops/ops.h"

namespace chargpt {

// ---------------------------------------------------------------- the mapping

CublasGemmArgs map_row_major(bool trans_a, bool trans_b, int M, int N, int K, int lda, int ldb, int ldc) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("map_row_major: " + what); };
  if (M < 0 || N < 0 || K < 0)
    bad("sizes M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + " must be >= 0");
  // Row strides must hold a stored row: A is [M,K] (or [K,M] transposed), B [K,N] (or [N,K]), C [M,N].
  const int a_cols = trans_a ? M : K, b_cols = trans_b ? K : N;
  if (lda < std::max(1, a_cols)) bad("lda=" + std::to_string(lda) + " < A's row length " + std::to_string(a_cols));
  if (ldb < std::max(1, b_cols)) bad("ldb=" + std::to_string(ldb) + " < B's row length " + std::to_string(b_cols));
  if (ldc < std::max(1, N)) bad("ldc=" + std::to_string(ldc) + " < C's row length " + std::to_string(N));
  CublasGemmArgs g;
  g.swap_operands = true;  // Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLAS's A is our B
  g.trans_a = trans_b;
  g.trans_b = trans_a;
  g.m = N;
  g.n = M;
  g.k = K;
  g.lda = ldb;
  g.ldb = lda;
  g.ldc = ldc;
  return g;
}

// ---------------------------------------------------------------- staging

size_t align_floats(size_t n) { return (n + StagingPlan::kAlign - 1) / StagingPlan::kAlign * StagingPlan::kAlign; }

StagingPlan StagingPlan::forward(int R, int IC, int OC, bool bias) {
  StagingPlan p;
  p.inp = 0;
  p.in_floats = (size_t)R * IC;
  p.out = 0;
  p.out_floats = (size_t)R * OC;
  p.ones = bias ? (size_t)R : 0;
  return p;
}

StagingPlan StagingPlan::backward(int R, int IC, int OC, bool dinp, bool dbias) {
  StagingPlan p;
  p.dout = 0;
  p.inp = align_floats((size_t)R * OC);
  p.in_floats = p.inp + (size_t)R * IC;
  size_t at = 0;
  if (dinp) {
    p.dinp = 0;
    at = align_floats((size_t)R * IC);
  }
  p.dweight = at;
  at += (size_t)OC * IC;
  if (dbias) {
    p.dbias = align_floats(at);
    at = p.dbias + (size_t)OC;
  }
  p.out_floats = at;
  p.ones = dbias ? (size_t)R : 0;
  return p;
}

// ---------------------------------------------------------------- upload schedule

void WeightUploads::bind(size_t n) {
  std::lock_guard<std::mutex> g(mu_);
  n_ = n;
  marked_.assign(1, {0, n});
  pending_.store(n > 0, std::memory_order_release);
}

void WeightUploads::mark(size_t begin, size_t end) {
  if (begin > end || end > n_)
    throw std::out_of_range("weights_changed(" + std::to_string(begin) + ", " + std::to_string(end) +
                            ") outside the bound block of " + std::to_string(n_) + " floats");
  if (begin == end) return;
  std::lock_guard<std::mutex> g(mu_);
  marked_.emplace_back(begin, end);
  pending_.store(true, std::memory_order_release);
}

std::vector<std::pair<size_t, size_t>> WeightUploads::begin_flush() {
  std::vector<std::pair<size_t, size_t>> r;
  {
    std::lock_guard<std::mutex> g(mu_);
    r.swap(marked_);
  }
  std::sort(r.begin(), r.end());
  size_t w = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    if (w > 0 && r[i].first <= r[w - 1].second) r[w - 1].second = std::max(r[w - 1].second, r[i].second);
    else r[w++] = r[i];
  }
  r.resize(w);
  return r;
}

void WeightUploads::end_flush(const std::vector<std::pair<size_t, size_t>>& uploaded) {
  std::lock_guard<std::mutex> g(mu_);
  if (!uploaded.empty()) {
    ++flushes_;
    if (uploaded.size() == 1 && uploaded[0].first == 0 && uploaded[0].second == n_) ++full_;
    copies_ += uploaded.size();
    for (const auto& r : uploaded) floats_ += r.second - r.first;
  }
  if (marked_.empty()) pending_.store(false, std::memory_order_release);
}

size_t WeightUploads::size() const {
  std::lock_guard<std::mutex> g(mu_);
  return n_;
}
size_t WeightUploads::flushes() const {
  std::lock_guard<std::mutex> g(mu_);
  return flushes_;
}
size_t WeightUploads::full_uploads() const {
  std::lock_guard<std::mutex> g(mu_);
  return full_;
}
size_t WeightUploads::copies() const {
  std::lock_guard<std::mutex> g(mu_);
  return copies_;
}
size_t WeightUploads::floats_uploaded() const {
  std::lock_guard<std::mutex> g(mu_);
  return floats_;
}

// ---------------------------------------------------------------- the backend

namespace {

// A buffer that only grows: reallocated (contents dropped) when a call needs more.
struct GrowBuffer {
  float* p = nullptr;
  size_t cap = 0;
};

// One worker thread's lane and staging buffers.
struct LaneState {
  std::unique_ptr<DeviceLane> lane;
  GrowBuffer h_in, h_out;  // pinned host
  GrowBuffer d_in, d_out;  // device
  GrowBuffer d_ones;       // device, all ones

  LaneState() = default;
  LaneState(const LaneState&) = delete;  // owns device memory
  LaneState& operator=(const LaneState&) = delete;
  ~LaneState() {
    if (!lane) return;
    lane->free_pinned(h_in.p), lane->free_pinned(h_out.p);
    lane->free_device(d_in.p), lane->free_device(d_out.p), lane->free_device(d_ones.p);
  }
  void reserve_pinned(GrowBuffer& b, size_t n) {
    if (n <= b.cap) return;
    lane->free_pinned(b.p);
    b = {};
    b.p = lane->alloc_pinned(n);
    b.cap = n;
  }
  void reserve_device(GrowBuffer& b, size_t n) {
    if (n <= b.cap) return;
    lane->free_device(b.p);
    b = {};
    b.p = lane->alloc_device(n);
    b.cap = n;
  }
  void reserve(size_t in, size_t out) {
    reserve_pinned(h_in, in);
    reserve_device(d_in, in);
    reserve_pinned(h_out, out);
    reserve_device(d_out, out);
  }
  // A device vector of at least n ones.
  const float* ones(size_t n) {
    if (n > d_ones.cap) {
      reserve_device(d_ones, n);
      reserve_pinned(h_in, n);  // the ones travel through the in staging buffer
      std::fill(h_in.p, h_in.p + n, 1.f);
      lane->upload(d_ones.p, h_in.p, n);
      lane->sync();  // h_in is about to be overwritten
    }
    return d_ones.p;
  }
  // Row-major C[M,N] = op(A)·op(B) + beta·C on device pointers.
  void gemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float beta,
            float* C, int ldc, bool allow_tf32 = true) {
    const CublasGemmArgs g = map_row_major(ta, tb, M, N, K, lda, ldb, ldc);
    const auto [a, b] = g.operands(A, B);
    lane->sgemm(g, 1.f, a, b, beta, C, allow_tf32);
  }
};

// Floats a row-major [rows, cols] matrix with row stride ld spans.
size_t span(int rows, int cols, int ld) { return rows == 0 || cols == 0 ? 0 : (size_t)(rows - 1) * ld + cols; }

class DeviceBackend final : public Backend {
 public:
  explicit DeviceBackend(std::unique_ptr<Device> device) : device_(std::move(device)) {}
  ~DeviceBackend() override {
    lanes_.clear();  // the lanes' buffers before the device
    if (weights_) device_->free_device(weights_);
  }

  std::string name() const override { return device_->name(); }

  void bind_weights(const float* params, size_t n) override {
    std::lock_guard<std::mutex> g(flush_mu_);
    if (weights_) device_->free_device(weights_);
    weights_ = nullptr;
    params_ = params;
    n_ = n;
    weights_ = n ? device_->alloc_device(n) : nullptr;
    uploads_.bind(n);  // everything to be uploaded before the first product
  }

  // Marks only; the upload is lazy (before the first product that reads the
  // weights). Uploading here instead would make one small copy and one wait per
  // AdamW chunk from every optimizer thread at once; marking costs a lock and a
  // push, and the next product uploads the whole block in one copy.
  void weights_changed(size_t begin, size_t end) override { uploads_.mark(begin, end); }

  // Times the whole block was uploaded (once at the first product after binding
  // or loading, then once per optimizer step).
  size_t weight_syncs() const override { return uploads_.full_uploads(); }

  void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int R, int IC,
                      int OC) override {
    if (R <= 0) return;
    LaneState& L = lane();
    sync_weights(L);
    const float* w = device_weight(weight, (size_t)OC * IC);
    const float* b = bias ? device_weight(bias, OC) : nullptr;
    const StagingPlan p = StagingPlan::forward(R, IC, OC, bias != nullptr);
    const float* ones = b ? L.ones(p.ones) : nullptr;
    L.reserve(p.in_floats, p.out_floats);
    std::memcpy(L.h_in.p + p.inp, inp, sizeof(float) * R * IC);
    L.lane->upload(L.d_in.p, L.h_in.p, p.in_floats);
    float* d_out = L.d_out.p + p.out;
    // out = ones[R,1]·bias[1,OC] (exact: one term, TF32 off), then += inp·weightᵀ,
    // as the CPU path does with a copy of the bias and beta = 1.
    if (b) L.gemm(false, false, R, OC, 1, ones, 1, b, OC, 0.f, d_out, OC, /*allow_tf32=*/false);
    L.gemm(false, true, R, OC, IC, L.d_in.p + p.inp, IC, w, IC, b ? 1.f : 0.f, d_out, OC);
    L.lane->download(L.h_out.p, L.d_out.p, p.out_floats);
    L.lane->sync();
    std::memcpy(out, L.h_out.p + p.out, sizeof(float) * R * OC);
  }

  void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, int R, int IC, int OC, bool accumulate) override {
    if (R <= 0) {
      if (!accumulate) {
        std::memset(dweight, 0, sizeof(float) * OC * IC);
        if (dbias) std::memset(dbias, 0, sizeof(float) * OC);
      }
      return;
    }
    LaneState& L = lane();
    const StagingPlan p = StagingPlan::backward(R, IC, OC, dinp != nullptr, dbias != nullptr);
    const float* w = nullptr;
    if (dinp) {
      sync_weights(L);
      w = device_weight(weight, (size_t)OC * IC);
    }
    const float* ones = dbias ? L.ones(p.ones) : nullptr;
    L.reserve(p.in_floats, p.out_floats);
    std::memcpy(L.h_in.p + p.dout, dout, sizeof(float) * R * OC);
    std::memcpy(L.h_in.p + p.inp, inp, sizeof(float) * R * IC);
    L.lane->upload(L.d_in.p, L.h_in.p, p.in_floats);
    const float* d_dout = L.d_in.p + p.dout;
    const float* d_inp = L.d_in.p + p.inp;
    // dinp[R,IC] = dout[R,OC]·weight[OC,IC]
    if (dinp) L.gemm(false, false, R, IC, OC, d_dout, OC, w, IC, 0.f, L.d_out.p + p.dinp, IC);
    // dweight[OC,IC] = doutᵀ·inp
    L.gemm(true, false, OC, IC, R, d_dout, OC, d_inp, IC, 0.f, L.d_out.p + p.dweight, IC);
    // dbias[1,OC] = ones[1,R]·dout[R,OC]
    if (dbias) L.gemm(false, false, 1, OC, R, ones, R, d_dout, OC, 0.f, L.d_out.p + p.dbias, OC, false);
    L.lane->download(L.h_out.p, L.d_out.p, p.out_floats);
    L.lane->sync();
    // accumulate: added on the host (C + AB, as the CPU's beta = 1 does), so the
    // gradient never has to be uploaded.
    if (dinp) std::memcpy(dinp, L.h_out.p + p.dinp, sizeof(float) * R * IC);
    put(dweight, L.h_out.p + p.dweight, (size_t)OC * IC, accumulate);
    if (dbias) put(dbias, L.h_out.p + p.dbias, OC, accumulate);
  }

  // The KV-cache step runs on the CPU, on the host weights (always current: the
  // host block is the truth). It is one memory-bound matrix-vector product per
  // layer and token, split over threads in row ranges; on the GPU every range
  // would be a round trip (upload x, product, download, wait) costing more than
  // the product, and cuBLAS does not promise that a row's result is the same
  // whatever range it is computed in, which this call's contract requires.
  // The sampler's prefill (gpt_forward) does run on the device.
  void matvec_forward(float* out, const float* weight, const float* bias, const float* x, int IC, int row0,
                      int row1) override {
    matvec_rows(out, weight, bias, x, IC, row0, row1);
  }

  // Host arrays: uploads A, B (and C if beta != 0), one product, downloads C.
  // The rate it gives includes the transfers, as every product of this backend does.
  void gemm(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
            float beta, float* C, int ldc) override {
    map_row_major(trans_a, trans_b, M, N, K, lda, ldb, ldc);  // validates before anything is copied
    LaneState& L = lane();
    const size_t a_n = trans_a ? span(K, M, lda) : span(M, K, lda);
    const size_t b_n = trans_b ? span(N, K, ldb) : span(K, N, ldb);
    const size_t c_n = span(M, N, ldc);
    const size_t b_off = align_floats(a_n);
    L.reserve(b_off + b_n, c_n);
    std::memcpy(L.h_in.p, A, sizeof(float) * a_n);
    std::memcpy(L.h_in.p + b_off, B, sizeof(float) * b_n);
    L.lane->upload(L.d_in.p, L.h_in.p, b_off + b_n);
    if (beta != 0.f) {
      std::memcpy(L.h_out.p, C, sizeof(float) * c_n);
      L.lane->upload(L.d_out.p, L.h_out.p, c_n);
    }
    L.gemm(trans_a, trans_b, M, N, K, L.d_in.p, lda, L.d_in.p + b_off, ldb, beta, L.d_out.p, ldc);
    L.lane->download(L.h_out.p, L.d_out.p, c_n);
    L.lane->sync();
    // Only C's rows' first N floats are ours; the gaps between rows keep the caller's values.
    for (int m = 0; m < M; ++m) std::memcpy(C + (size_t)m * ldc, L.h_out.p + (size_t)m * ldc, sizeof(float) * N);
  }

 private:
  LaneState& lane() {
    LaneState& L = lanes_.local();
    if (!L.lane) L.lane = device_->make_lane();
    return L;
  }

  // The device copy of n floats at host address p of the bound block.
  const float* device_weight(const float* p, size_t n) const {
    if (!params_ || p < params_ || p + n > params_ + n_)
      throw std::logic_error(name() + ": a weight pointer outside the bound parameter block (bind_weights first)");
    return weights_ + (p - params_);
  }

  // Uploads what was marked since the last upload, before a product reads the
  // weights. The first thread to get here uploads on its own lane and waits for
  // the copy; the others wait on the lock, then find nothing pending. One wait
  // per optimizer step.
  void sync_weights(LaneState& L) {
    if (!uploads_.pending()) return;
    std::lock_guard<std::mutex> g(flush_mu_);
    const auto ranges = uploads_.begin_flush();
    for (const auto& [b, e] : ranges) L.lane->upload(weights_ + b, params_ + b, e - b);
    if (!ranges.empty()) L.lane->sync();
    uploads_.end_flush(ranges);
  }

  static void put(float* dst, const float* src, size_t n, bool accumulate) {
    if (accumulate) {
      for (size_t i = 0; i < n; ++i) dst[i] += src[i];
    } else {
      std::memcpy(dst, src, sizeof(float) * n);
    }
  }

  std::unique_ptr<Device> device_;
  const float* params_ = nullptr;
  size_t n_ = 0;
  float* weights_ = nullptr;  // device copy of params_[0, n_)
  WeightUploads uploads_;
  std::mutex flush_mu_;
  tbb::enumerable_thread_specific<LaneState> lanes_;
};

}  // namespace

std::unique_ptr<Backend> make_device_backend(std::unique_ptr<Device> device) {
  if (!device) throw std::invalid_argument("make_device_backend: null device");
  return std::make_unique<DeviceBackend>(std::move(device));
}

}  // namespace chargpt
