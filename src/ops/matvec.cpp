// Matrix-vector rows (the KV-cache step): 16 lanes of partial sums per row,
// reduced by a fixed tree, so a row's value never depends on how rows are split.
#include <cstddef>

#include "ops/ops.h"

namespace chargpt {

namespace {

constexpr int kLanes = 16;

// Four rows at once (x loaded once per chunk). Per row: lane j sums the
// products at i ≡ j (mod 16), then the lanes add up pairwise (8, 4, 2, 1).
inline void dot4(float out[4], const float* __restrict w, int ldw, const float* __restrict x, int n) {
  float a0[kLanes] = {}, a1[kLanes] = {}, a2[kLanes] = {}, a3[kLanes] = {};
  const float* w0 = w;
  const float* w1 = w + ldw;
  const float* w2 = w + 2 * (size_t)ldw;
  const float* w3 = w + 3 * (size_t)ldw;
  int i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float xv = x[i + j];
      a0[j] += w0[i + j] * xv;
      a1[j] += w1[i + j] * xv;
      a2[j] += w2[i + j] * xv;
      a3[j] += w3[i + j] * xv;
    }
  for (int j = 0; i + j < n; ++j) {
    const float xv = x[i + j];
    a0[j] += w0[i + j] * xv;
    a1[j] += w1[i + j] * xv;
    a2[j] += w2[i + j] * xv;
    a3[j] += w3[i + j] * xv;
  }
  for (int s = kLanes / 2; s >= 1; s /= 2)
    for (int j = 0; j < s; ++j) {
      a0[j] += a0[j + s];
      a1[j] += a1[j + s];
      a2[j] += a2[j + s];
      a3[j] += a3[j + s];
    }
  out[0] = a0[0];
  out[1] = a1[0];
  out[2] = a2[0];
  out[3] = a3[0];
}

}  // namespace

void matvec_rows(float* out, const float* W, const float* b, const float* x, int IC, int o0, int o1) {
  int o = o0;
  float r[4];
  for (; o + 4 <= o1; o += 4) {
    dot4(r, W + (size_t)o * IC, IC, x, IC);
    for (int j = 0; j < 4; ++j) out[o + j] = b ? r[j] + b[o + j] : r[j];
  }
  for (; o < o1; ++o) {
    dot4(r, W + (size_t)o * IC, 0, x, IC);  // rows 1..3 alias row 0: same arithmetic as above
    out[o] = b ? r[0] + b[o] : r[0];
  }
}

}  // namespace chargpt
