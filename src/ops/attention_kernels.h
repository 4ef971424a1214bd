#pragma once
// Causal attention kernels. Per (sequence, head) the products are small (T x T x
// hd, e.g. 64 x 64 x 32): sgemm on the full square wastes half its work above
// the diagonal and spends much of the rest on packing. These kernels skip the
// upper triangle in 4-row blocks and keep their accumulators in registers,
// kW floats wide.
// Every sum runs over its index in a fixed order, so results never depend on
// the caller's threading.
//
// Templates on the vector width W (vec.h); attention.cpp instantiates them at
// kNativeWidth for the library.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "ops/vec.h"

namespace chargpt {

template <int W>
struct AttentionKernels : Vec<W> {
  using typename Vec<W>::vf;
  using Vec<W>::loadv;
  using Vec<W>::storev;
  using Vec<W>::loadv_reg;
  using Vec<W>::hsum;
  using Vec<W>::kLane;
  static constexpr int kW = W;

  // Rows per register block, and column groups per register block in the P·V-shaped
  // kernels: 4 rows x 2 groups = 8 accumulators in 16 registers (AVX2), 8 x 2 = 16 in 32
  // (AVX-512), which shares each loaded vector among twice as many FMAs (10% less time).
  // Rows of a block beyond the diagonal add exact zeros, so the sums are the same.
  static constexpr int kRows = W >= 16 ? 8 : 4;
  static constexpr int kPair = 2;

  static int padded(int T) { return (T + kW - 1) / kW * kW; }

  // XT[hd, Tp] = X[T, hd] (row stride ldx) transposed, columns T..Tp zero.
  static void transpose_pad(float* XT, const float* X, int ldx, int T, int hd) {
    const int Tp = padded(T);
    for (int d = 0; d < hd; ++d) {
      float* row = XT + (size_t)d * Tp;
      for (int t = 0; t < T; ++t) row[t] = X[(size_t)t * ldx + d];
      for (int t = T; t < Tp; ++t) row[t] = 0.f;
    }
  }

  // S[i, j] = alpha · Σ_d A[i, d] · BT[d, j] for the NR rows from i0, over the
  // kW-column groups up to the one holding column i0+NR-1 (the causal part plus
  // at most kW-1 columns of padding). S has row stride lds, BT row stride Tp.
  // NC groups at a time share each A[i, d] among them: 4 rows x 2 groups = 8
  // independent sums, enough to cover the FMA latency (4 were not). The order of
  // each sum over d is the same for any NC, so the result's bits are too.
  template <int NR, int NC>
  static void scores_block(float* S, int lds, const float* A, int lda, const float* BT, int Tp, int i0, int g,
                           int hd, float alpha) {
    vf acc[NR][NC] = {};
    const float* b = BT + g * kW;
    for (int d = 0; d < hd; ++d) {
      vf bv[NC];
      for (int k = 0; k < NC; ++k) bv[k] = loadv_reg(b + (size_t)d * Tp + k * kW);
      for (int r = 0; r < NR; ++r) {
        const float a = A[(size_t)(i0 + r) * lda + d];
        for (int k = 0; k < NC; ++k) acc[r][k] += a * bv[k];
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int k = 0; k < NC; ++k) storev(S + (size_t)(i0 + r) * lds + (g + k) * kW, acc[r][k] * alpha);
  }
  template <int NR>
  static void scores_rows(float* S, int lds, const float* A, int lda, const float* BT, int Tp, int i0, int hd,
                            float alpha) {
    const int groups = (i0 + NR - 1) / kW + 1;
    int g = 0;
    for (; g + kPair <= groups; g += kPair) scores_block<NR, kPair>(S, lds, A, lda, BT, Tp, i0, g, hd, alpha);
    for (; g < groups; ++g) scores_block<NR, 1>(S, lds, A, lda, BT, Tp, i0, g, hd, alpha);
  }
  static void causal_scores(float* S, const float* A, int lda, const float* BT, int T, int hd, float alpha) {
    const int Tp = padded(T);
    int i = 0;
    for (; i + kRows <= T; i += kRows) scores_rows<kRows>(S, Tp, A, lda, BT, Tp, i, hd, alpha);
    for (; i < T; ++i) scores_rows<1>(S, Tp, A, lda, BT, Tp, i, hd, alpha);
  }

  // Y[i, :hd] = alpha · Σ_{j<=i} P[i, j] · V[j, :hd] for the NR rows from i0.
  // Needs P[i, j] = 0 for i < j < i0+NR (zeros right of the diagonal in the block).
  // Columns go NC groups of kW at a time, sharing each P[i, j] among them.
  template <int NR, int NC>
  static void lower_times_block(float* Y, int ldy, const float* P, int ldp, const float* V, int ldv, int i0, int c,
                                float alpha) {
    vf acc[NR][NC] = {};
    for (int j = 0; j < i0 + NR; ++j) {
      vf vv[NC];
      for (int k = 0; k < NC; ++k) vv[k] = loadv_reg(V + (size_t)j * ldv + c + k * kW);
      for (int r = 0; r < NR; ++r) {
        const float p = P[(size_t)(i0 + r) * ldp + j];
        for (int k = 0; k < NC; ++k) acc[r][k] += p * vv[k];
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int k = 0; k < NC; ++k) storev(Y + (size_t)(i0 + r) * ldy + c + k * kW, acc[r][k] * alpha);
  }
  template <int NR>
  static void lower_times_rows(float* Y, int ldy, const float* P, int ldp, const float* V, int ldv, int i0, int hd,
                               float alpha) {
    int c = 0;
    for (; c + kPair * kW <= hd; c += kPair * kW) lower_times_block<NR, kPair>(Y, ldy, P, ldp, V, ldv, i0, c, alpha);
    for (; c + kW <= hd; c += kW) lower_times_block<NR, 1>(Y, ldy, P, ldp, V, ldv, i0, c, alpha);
    for (; c < hd; ++c)  // columns beyond the last whole group of kW
      for (int r = 0; r < NR; ++r) {
        float acc = 0.f;
        for (int j = 0; j < i0 + NR; ++j) acc += P[(size_t)(i0 + r) * ldp + j] * V[(size_t)j * ldv + c];
        Y[(size_t)(i0 + r) * ldy + c] = acc * alpha;
      }
  }
  static void lower_times(float* Y, int ldy, const float* P, int ldp, const float* V, int ldv, int T, int hd,
                          float alpha) {
    int i = 0;
    for (; i + kRows <= T; i += kRows) lower_times_rows<kRows>(Y, ldy, P, ldp, V, ldv, i, hd, alpha);
    for (; i < T; ++i) lower_times_rows<1>(Y, ldy, P, ldp, V, ldv, i, hd, alpha);
  }

  // Z[j, :hd] = alpha · Σ_{i>=j} P[i, j] · X[i, :hd] for the NR rows from j0.
  // Needs P[i, j] = 0 for j0 <= i < j (zeros above the diagonal in the block).
  template <int NR, int NC>
  static void lower_t_times_block(float* Z, int ldz, const float* P, int ldp, const float* X, int ldx, int j0, int T,
                                  int c, float alpha) {
    vf acc[NR][NC] = {};
    for (int i = j0; i < T; ++i) {
      vf xv[NC];
      for (int k = 0; k < NC; ++k) xv[k] = loadv_reg(X + (size_t)i * ldx + c + k * kW);
      for (int r = 0; r < NR; ++r) {
        const float p = P[(size_t)i * ldp + j0 + r];
        for (int k = 0; k < NC; ++k) acc[r][k] += p * xv[k];
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int k = 0; k < NC; ++k) storev(Z + (size_t)(j0 + r) * ldz + c + k * kW, acc[r][k] * alpha);
  }
  template <int NR>
  static void lower_t_times_rows(float* Z, int ldz, const float* P, int ldp, const float* X, int ldx, int j0, int T,
                                 int hd, float alpha) {
    int c = 0;
    for (; c + kPair * kW <= hd; c += kPair * kW)
      lower_t_times_block<NR, kPair>(Z, ldz, P, ldp, X, ldx, j0, T, c, alpha);
    for (; c + kW <= hd; c += kW) lower_t_times_block<NR, 1>(Z, ldz, P, ldp, X, ldx, j0, T, c, alpha);
    for (; c < hd; ++c)
      for (int r = 0; r < NR; ++r) {
        float acc = 0.f;
        for (int i = j0; i < T; ++i) acc += P[(size_t)i * ldp + j0 + r] * X[(size_t)i * ldx + c];
        Z[(size_t)(j0 + r) * ldz + c] = acc * alpha;
      }
  }
  static void lower_t_times(float* Z, int ldz, const float* P, int ldp, const float* X, int ldx, int T, int hd,
                            float alpha) {
    int j = 0;
    for (; j + kRows <= T; j += kRows) lower_t_times_rows<kRows>(Z, ldz, P, ldp, X, ldx, j, T, hd, alpha);
    for (; j < T; ++j) lower_t_times_rows<1>(Z, ldz, P, ldp, X, ldx, j, T, hd, alpha);
  }

  // Softmax rows go kW columns at a time, including the group that holds the
  // diagonal, with the lanes right of it masked; only where that group would run
  // past column T (T not a multiple of kW) does the rest of the row go scalar.
  // Columns [0, nv) of row i go on vectors.
  static int vector_columns(int i, int T) {
    const int group_end = (i + 1 + kW - 1) / kW * kW;
    return group_end <= T ? group_end : (i + 1) / kW * kW;
  }

  // p[0..i] = softmax(s[0..i]), p[i+1..T) = 0. s has room for whole groups of kW
  // up to the one holding column i (the scores kernel fills them).
  static void causal_softmax_row(float* p, const float* s, int i, int T) {
    const int n = i + 1, nv = vector_columns(i, T);
    const float fi = (float)i, neg_inf = -std::numeric_limits<float>::infinity();
    float mx = s[0];
    if (nv) {
      vf m = {};
      m += neg_inf;
      for (int j = 0; j < nv; j += kW) {
        const vf x = kLane + (float)j <= fi ? loadv(s + j) : neg_inf;
        m = x > m ? x : m;
      }
      for (int k = 0; k < kW; ++k) mx = m[k] > mx ? m[k] : mx;
    }
    for (int j = nv; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
    vf acc = {};
    for (int j = 0; j < nv; j += kW) {
      const vf e = kLane + (float)j <= fi ? exp_approx(loadv(s + j) - mx) : 0.f;
      storev(p + j, e);
      acc += e;
    }
    float sum = hsum(acc);
    for (int j = nv; j < n; ++j) {
      p[j] = exp_approx(s[j] - mx);
      sum += p[j];
    }
    const float inv = 1.f / sum;
    for (int j = 0; j < nv; j += kW) storev(p + j, loadv(p + j) * inv);
    for (int j = nv; j < n; ++j) p[j] *= inv;
    for (int j = std::max(n, nv); j < T; ++j) p[j] = 0.f;
  }

  // d[j] = p[j] · (d[j] - Σ_k p[k] d[k]) over j, k <= i: the softmax's backward,
  // in place; d[j] = 0 for i < j < zero_end.
  static void causal_softmax_backward_row(float* d, const float* p, int i, int T, int zero_end) {
    const int n = i + 1, nv = vector_columns(i, T);
    const float fi = (float)i;
    vf acc = {};
    for (int j = 0; j < nv; j += kW) acc += kLane + (float)j <= fi ? loadv(p + j) * loadv(d + j) : 0.f;
    float dot = hsum(acc);
    for (int j = nv; j < n; ++j) dot += p[j] * d[j];
    for (int j = 0; j < nv; j += kW)
      storev(d + j, kLane + (float)j <= fi ? loadv(p + j) * (loadv(d + j) - dot) : 0.f);
    for (int j = nv; j < n; ++j) d[j] = p[j] * (d[j] - dot);
    for (int j = std::max(n, nv); j < zero_end; ++j) d[j] = 0.f;  // (the vector groups zeroed up to nv)
  }

  static size_t scratch_floats(int T, int hd) { return ((size_t)T + (size_t)hd) * padded(T); }

  static void head_forward(float* y, int ldy, float* P, float* scratch, const float* q, int T, int C, int hd) {
    const int C3 = 3 * C, Tp = padded(T);
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* S = scratch;                      // [T, Tp] scores
    float* KT = scratch + (size_t)T * Tp;    // [hd, Tp]
    transpose_pad(KT, k, C3, T, hd);
    causal_scores(S, q, C3, KT, T, hd, 1.f / std::sqrt((float)hd));
    for (int i = 0; i < T; ++i) causal_softmax_row(P + (size_t)i * T, S + (size_t)i * Tp, i, T);
    lower_times(y, ldy, P, T, v, C3, T, hd, 1.f);
  }

  static void forward(float* out, float* att_probs, float* scratch, const float* qkv, int N, int T, int C, int NH) {
    const int hd = C / NH;
    for (int n = 0; n < N; ++n)
      for (int h = 0; h < NH; ++h)
        head_forward(out + (size_t)n * T * C + h * hd, C, att_probs + ((size_t)n * NH + h) * T * T, scratch,
                     qkv + (size_t)n * T * 3 * C + h * hd, T, C, hd);
  }

  static void backward(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att_probs,
                       int N, int T, int C, int NH) {
    const int hd = C / NH, C3 = 3 * C, Tp = padded(T);
    const float scale = 1.f / std::sqrt((float)hd);
    float* dS = scratch;                    // [T, Tp]
    float* VT = scratch + (size_t)T * Tp;   // [hd, Tp]
    for (int n = 0; n < N; ++n)
      for (int h = 0; h < NH; ++h) {
        const float* q = qkv + (size_t)n * T * C3 + h * hd;
        const float* k = q + C;
        const float* v = q + 2 * C;
        float* dq = dqkv + (size_t)n * T * C3 + h * hd;
        float* dk = dq + C;
        float* dv = dq + 2 * C;
        const float* P = att_probs + ((size_t)n * NH + h) * T * T;
        const float* dy = dout + (size_t)n * T * C + h * hd;
        transpose_pad(VT, v, C3, T, hd);
        causal_scores(dS, dy, C, VT, T, hd, 1.f);   // dP = dy · vᵀ (causal part)
        lower_t_times(dv, C3, P, T, dy, C, T, hd, 1.f);  // dv = Pᵀ · dy
        for (int i = 0; i < T; ++i) {               // softmax backward, in place
          const int block_end = std::min(Tp, (i / kRows + 1) * kRows);  // what the kernels below read
          causal_softmax_backward_row(dS + (size_t)i * Tp, P + (size_t)i * T, i, T, block_end);
        }
        lower_times(dq, C3, dS, Tp, k, C3, T, hd, scale);    // dq = dS · k / sqrt(hd)
        lower_t_times(dk, C3, dS, Tp, q, C3, T, hd, scale);  // dk = dSᵀ · q / sqrt(hd)
      }
  }

  // One new position's attention for one head (the KV-cache step), the last row
  // of head_forward's computation over n positions: the same kernels, sums and
  // exp. q[hd]; keys and values of positions 0..n-1 at K and V, row stride ld.
  static size_t decode_scratch_floats(int T, int hd) { return ((size_t)hd + 1) * padded(T); }
  static void head_decode(float* y, float* scratch, const float* q, const float* K, const float* V, int ld, int n,
                          int hd) {
    const int Tp = padded(n);
    float* s = scratch;        // [Tp] scores, then probabilities
    float* KT = scratch + Tp;  // [hd, Tp]
    transpose_pad(KT, K, ld, n, hd);
    // Row n-1 of the scores and of P·V, written at row 0: strides 0 for s, q, y.
    scores_rows<1>(s, 0, q, 0, KT, Tp, n - 1, hd, 1.f / std::sqrt((float)hd));
    causal_softmax_row(s, s, n - 1, n);
    lower_times_rows<1>(y, 0, s, 0, V, ld, n - 1, hd, 1.f);
  }
};

}  // namespace chargpt
