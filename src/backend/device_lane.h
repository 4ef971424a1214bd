#pragma once
// The device backend's per-thread state (backend_device.cpp only): one lane,
// its grow-only staging buffers, its input cache and its counters.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "backend/cuda_mapping.h"
#include "backend/device_backend.h"

namespace chargpt::device_detail {

// A buffer that only grows: reallocated (contents dropped) when a call needs more.
struct GrowBuffer {
  float* p = nullptr;
  size_t cap = 0;
};

// A forward's activation input kept on the device (fp32, or bf16 in the first
// half of the floats) for the backward's weight gradient.
struct CachedInput {
  GrowBuffer buf;
  int R = 0, IC = 0;
  uint64_t seq = 0;   // which forward wrote it (the backend's owner registry must agree)
  uint64_t hash = 0;  // of the host input at the forward (verify mode)
};

// The most floats one lane's input cache holds before it is emptied (1 GiB).
constexpr size_t kCacheCapFloats = size_t(1) << 28;

// A result piece on its way down: chunks [0, n) of `pinned`, events from slot0 on (chunked).
struct OutPiece {
  float* dst;
  const float* pinned;
  size_t n;
  bool accumulate;  // += on the host (C + AB, as the CPU's beta = 1 does) instead of =
  int slot0;
};

// One worker thread's lane, staging buffers, input cache and counters.
struct LaneState {
  std::unique_ptr<DeviceLane> lane;
  GrowBuffer h_in, h_out;  // pinned host
  GrowBuffer d_in, d_out;  // device
  GrowBuffer d_ones;       // device, all ones
  std::unordered_map<const float*, CachedInput> cache;
  size_t cache_floats = 0;
  std::vector<OutPiece> down;  // this call's downloads
  int slots = 0;               // events used by this call
  bool phase_open = false;
  DevicePhase cur = DevicePhase::end;
  DeviceStats n;  // this lane's share (weight counters stay 0)

  LaneState() = default;
  LaneState(const LaneState&) = delete;  // owns device memory
  LaneState& operator=(const LaneState&) = delete;
  ~LaneState() {
    if (!lane) return;
    clear_cache();
    lane->free_pinned(h_in.p), lane->free_pinned(h_out.p);
    lane->free_device(d_in.p), lane->free_device(d_out.p), lane->free_device(d_ones.p);
  }
  void clear_cache() {
    for (auto& [p, c] : cache) lane->free_device(c.buf.p);
    cache.clear();
    cache_floats = 0;
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
  // A device vector of at least n ones (fp32).
  const float* ones(size_t n) {
    if (n > d_ones.cap) {
      reserve_device(d_ones, n);
      reserve_pinned(h_in, n);  // the ones travel through the in staging buffer
      std::fill(h_in.p, h_in.p + n, 1.f);
      lane->upload(d_ones.p, h_in.p, sizeof(float) * n);
      lane->sync();  // h_in is about to be overwritten
    }
    return d_ones.p;
  }
  void phase(DevicePhase p, bool timers) {
    if (!timers || (phase_open && cur == p)) return;
    lane->phase(p);
    cur = p;
    phase_open = p != DevicePhase::end;
  }
  // Row-major C[M,N] = op(A)·op(B) + beta·C on device pointers.
  void gemm(bool ta, bool tb, int M, int N, int K, const void* A, int lda, const void* B, int ldb, float beta,
            float* C, int ldc, GemmInputs in, bool timers) {
    const CublasGemmArgs g = map_row_major(ta, tb, M, N, K, lda, ldb, ldc);
    const auto [a, b] = g.operands(A, B);
    phase(DevicePhase::product, timers);
    lane->gemm(g, 1.f, a, b, beta, C, in);
  }
};

// Floats a row-major [rows, cols] matrix with row stride ld spans.
inline size_t span(int rows, int cols, int ld) { return rows == 0 || cols == 0 ? 0 : (size_t)(rows - 1) * ld + cols; }

// Floats that hold n bf16 values.
inline size_t bf16_floats(size_t n) { return (n + 1) / 2; }

// The bias gradient of a bf16 backward, on the host in fp32 (its device input is bf16).
inline void host_dbias(float* dbias, const float* dout, int R, int OC, bool accumulate) {
  if (!accumulate) std::fill(dbias, dbias + OC, 0.f);
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < OC; ++o) dbias[o] += dout[(size_t)r * OC + o];
}

}  // namespace chargpt::device_detail
