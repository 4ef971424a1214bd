#pragma once
// The one dot product of the KV-cache step's matrix-vector rows (matvec_rows, the
// oneDNN bf16 backend's matvec): lane j sums the terms i ≡ j
// (mod 16) in index order, then a fixed tree adds the lanes. A row's value depends
// only on its inputs, never on which task or which range of rows computes it.
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace chargpt {

// bf16 bits -> float (exact).
inline float bf16_to_float(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

namespace lane_dot_detail {
inline float as_float(float v) { return v; }
inline float as_float(uint16_t v) { return bf16_to_float(v); }
}  // namespace lane_dot_detail

constexpr int kDotLanes = 16;

// out[r] = Σ_i w[r*ldw + i] · x[i] for r in [0, Rows), i in [0, n); W is float or bf16
// bits (uint16_t). Several rows at once load x once per chunk; per row the arithmetic
// is the same as for one row (ldw = 0 computes row 0 Rows times).
template <int Rows, class W>
inline void lane_dot_rows(float out[Rows], const W* __restrict w, size_t ldw, const float* __restrict x, int n) {
  using lane_dot_detail::as_float;
  float acc[Rows][kDotLanes] = {};
  int i = 0;
  for (; i + kDotLanes <= n; i += kDotLanes)
    for (int j = 0; j < kDotLanes; ++j) {
      const float xv = x[i + j];
      for (int r = 0; r < Rows; ++r) acc[r][j] += as_float(w[r * ldw + i + j]) * xv;
    }
  for (int j = 0; i + j < n; ++j) {
    const float xv = x[i + j];
    for (int r = 0; r < Rows; ++r) acc[r][j] += as_float(w[r * ldw + i + j]) * xv;
  }
  for (int s = kDotLanes / 2; s >= 1; s /= 2)
    for (int j = 0; j < s; ++j)
      for (int r = 0; r < Rows; ++r) acc[r][j] += acc[r][j + s];
  for (int r = 0; r < Rows; ++r) out[r] = acc[r][0];
}

// One row: Σ_i w[i] · x[i].
template <class W>
inline float lane_dot(const W* w, const float* x, int n) {
  float r[1];
  lane_dot_rows<1>(r, w, 0, x, n);
  return r[0];
}

}  // namespace chargpt
