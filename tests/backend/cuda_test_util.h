#pragma once
// Shared by the CUDA backend's tests: the NaN-aware relative error, the
// row-major reference product, and the emulated device (device and pinned
// memory are host arrays filled with NaN, so a product that reads memory nobody
// wrote shows up; products run as column-major OpenBLAS sgemm on the mapped
// arguments, bf16 operands widened exactly).
#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda_mapping.h"
#include "backend/device_backend.h"
#include "base/rng.h"
#include "engine/engine.h"
#include "model/model.h"
#include "support.h"

namespace chargpt::cuda_test {

inline std::vector<float> random_vec(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = 2.f * rng.uniform() - 1.f;
  return v;
}

// max |a - b| over max |b|: the relative error in the max norm. +inf if either
// array holds a NaN or an infinity (std::max would skip a NaN: max(d, NaN) = d).
inline double rel_err(const float* a, const float* b, size_t n) {
  double d = 0, s = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return std::numeric_limits<double>::infinity();
    d = std::max(d, std::fabs((double)a[i] - b[i]));
    s = std::max(s, std::fabs((double)b[i]));
  }
  return s > 0 ? d / s : d;
}

inline void row_major_ref(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                          float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.f, A, lda,
              B, ldb, beta, C, ldc);
}

// What cuBLAS would compute from the mapped arguments: a column-major sgemm.
inline void col_major_mapped(const CublasGemmArgs& g, float alpha, const float* A, const float* B, float beta,
                             float* C) {
  cblas_sgemm(CblasColMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans, g.m, g.n,
              g.k, alpha, A, g.lda, B, g.ldb, beta, C, g.ldc);
}

inline size_t span(int rows, int cols, int ld) {
  return rows == 0 || cols == 0 ? 0 : (size_t)(rows - 1) * ld + cols;
}

inline float bf16_value(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// x rounded to bf16 and back (round to nearest even, as to_bf16).
inline std::vector<float> bf16_round(const float* x, size_t n) {
  std::vector<float> r(n);
  for (size_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, &x[i], 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    std::memcpy(&r[i], &u, 4);
  }
  return r;
}

// What the emulated device saw.
struct DeviceLog {
  std::mutex mu;
  std::vector<std::pair<const void*, size_t>> uploads;  // host source, floats (bytes / 4)
  std::atomic<long> device_allocs{0}, pinned_allocs{0}, live{0}, lanes{0}, syncs{0}, gemms{0}, exact_gemms{0},
      bf16_gemms{0}, records{0}, waits{0};
  std::atomic<long> fail_upload_in{0};  // > 0: the upload that brings it to 0 throws
  size_t uploads_from(const float* block, size_t n, size_t* floats = nullptr) {
    std::lock_guard<std::mutex> g(mu);
    size_t c = 0, f = 0;
    for (const auto& [p, len] : uploads)
      if (p >= (const void*)block && p < (const void*)(block + n)) ++c, f += len;
    if (floats) *floats = f;
    return c;
  }
};

inline float* nan_array(size_t n) {
  float* p = new float[n];
  std::fill(p, p + n, std::numeric_limits<float>::quiet_NaN());
  return p;
}

class HostLane final : public DeviceLane {
 public:
  explicit HostLane(DeviceLog& log) : log_(log) { ++log_.lanes; }
  float* alloc_device(size_t n) override { return ++log_.device_allocs, ++log_.live, nan_array(n); }
  void free_device(float* p) noexcept override {
    if (p) --log_.live, delete[] p;
  }
  float* alloc_pinned(size_t n) override { return ++log_.pinned_allocs, ++log_.live, nan_array(n); }
  void free_pinned(float* p) noexcept override {
    if (p) --log_.live, delete[] p;
  }
  void upload(void* dev, const void* host, size_t bytes) override {
    if (log_.fail_upload_in > 0 && --log_.fail_upload_in == 0)
      throw std::runtime_error("emulated device: upload failed");
    std::memcpy(dev, host, bytes);
    std::lock_guard<std::mutex> g(log_.mu);
    log_.uploads.emplace_back(host, bytes / 4);
  }
  void download(void* host, const void* dev, size_t bytes) override { std::memcpy(host, dev, bytes); }
  void gemm(const CublasGemmArgs& g, float alpha, const void* A, const void* B, float beta, float* C,
            GemmInputs in) override {
    ++log_.gemms;
    if (in == GemmInputs::fp32_exact) ++log_.exact_gemms;
    if (in != GemmInputs::bf16) {
      col_major_mapped(g, alpha, static_cast<const float*>(A), static_cast<const float*>(B), beta, C);
      return;
    }
    ++log_.bf16_gemms;
    // Column-major operands: A is [lda, cols] with m (or k, transposed) rows used.
    const auto widen = [](const void* p, int rows, int cols, int ld) {
      std::vector<float> f(span(cols, rows, ld));
      const auto* h = static_cast<const uint16_t*>(p);
      for (int c = 0; c < cols; ++c)
        for (int r = 0; r < rows; ++r) f[(size_t)c * ld + r] = bf16_value(h[(size_t)c * ld + r]);
      return f;
    };
    const auto a = g.trans_a ? widen(A, g.k, g.m, g.lda) : widen(A, g.m, g.k, g.lda);
    const auto b = g.trans_b ? widen(B, g.n, g.k, g.ldb) : widen(B, g.k, g.n, g.ldb);
    col_major_mapped(g, alpha, a.data(), b.data(), beta, C);
  }
  void sync() override { ++log_.syncs; }
  void record(int slot) override {
    ++log_.records;
    recorded_ = std::max(recorded_, slot + 1);
  }
  void wait(int slot) override {
    ++log_.waits;
    if (slot >= recorded_) throw std::logic_error("emulated device: wait for an event never recorded");
  }
  void phase(DevicePhase p) override { marks_.push_back({p, std::chrono::steady_clock::now()}); }
  void take_times(double* seconds) override {
    for (size_t i = 0; i + 1 < marks_.size(); ++i)
      if (marks_[i].first != DevicePhase::end)
        seconds[(int)marks_[i].first] += std::chrono::duration<double>(marks_[i + 1].second - marks_[i].second).count();
    marks_.clear();
  }

 private:
  DeviceLog& log_;
  int recorded_ = 0;
  std::vector<std::pair<DevicePhase, std::chrono::steady_clock::time_point>> marks_;
};

class HostDevice final : public Device {
 public:
  explicit HostDevice(DeviceLog& log) : log_(log) {}
  std::string name() const override { return "emulated device"; }
  std::unique_ptr<DeviceLane> make_lane() override { return std::make_unique<HostLane>(log_); }
  float* alloc_device(size_t n) override { return ++log_.device_allocs, ++log_.live, nan_array(n); }
  void free_device(float* p) noexcept override {
    if (p) --log_.live, delete[] p;
  }

 private:
  DeviceLog& log_;
};

inline std::unique_ptr<Backend> emulated_backend(DeviceLog& log, const DeviceTuning& t = {}) {
  return make_device_backend(std::make_unique<HostDevice>(log), t);
}

inline Config small_config() {
  Config c;
  c.vocab_size = 65;
  c.block_size = 32;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 48;
  return c;
}

inline std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = (int32_t)rng.below(vocab);
  return t;
}

// The losses of `steps` optimizer steps of an engine (init_params with seed 7).
inline std::vector<double> train_losses(Engine& e, int steps, const std::vector<int32_t>& split) {
  init_params(e.cfg(), e.params(), 7);
  e.weights_loaded();
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) losses.push_back(e.train_step(split, 1e-3f, 1.f, AdamW{}));
  return losses;
}

// The parameters after `steps` steps of a 6-sequence batch in 3 shards at `threads` threads.
inline std::vector<float> weights_after(int threads, int steps, std::unique_ptr<Backend> be) {
  const Config cfg = small_config();
  const auto split = random_tokens(4000, cfg.vocab_size, 3);
  Engine e(cfg, {.batch_size = 6, .shard_size = 2, .threads = threads, .seed = 11}, std::move(be));
  train_losses(e, steps, split);
  return std::vector<float>(e.params(), e.params() + e.num_params());
}

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

// The table of one weight [IC·OC] and one bias [OC] per product shape {R, IC, OC}: tensors 2i and
// 2i + 1, laid out in order; the caller sets `block` to an array of table.floats floats.
template <size_t N>
WeightTable product_table(const int (&shapes)[N][3]) {
  WeightTable table;
  for (const auto& s : shapes) {
    table.tensors.push_back({table.floats, (size_t)s[1] * s[2]});
    table.tensors.push_back({table.floats + (size_t)s[1] * s[2], (size_t)s[2]});
    table.floats += (size_t)s[1] * s[2] + s[2];
  }
  return table;
}

}  // namespace chargpt::cuda_test
