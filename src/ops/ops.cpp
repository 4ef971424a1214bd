#include "ops/ops.h"

#include <immintrin.h>

#include <bit>
#include <cmath>
#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>


namespace chargpt {

// With AVX512-BF16 (every AMX CPU has it) one VCVTNE2PS2BF16 converts 32 floats, and the tail
// goes through the same instruction under a mask, so every element gets the same arithmetic
// (that instruction also treats denormal inputs as zero). Otherwise a branch-free loop that
// GCC vectorises.
void to_bf16(uint16_t* dst, const float* src, size_t n) {
#if defined(__AVX512BF16__)
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512bh r = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
    _mm512_storeu_si512((void*)(dst + i), (__m512i)r);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    const __m256bh r = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
    _mm256_mask_storeu_epi16((void*)(dst + i), m, (__m256i)r);
  }
#else
  for (size_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, &src[i], 4);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    dst[i] = (uint16_t)(nan ? ((u >> 16) | 0x40u) : rounded);
  }
#endif
}

void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int N, int T, int C) {
  for (int n = 0; n < N; ++n)
    for (int t = 0; t < T; ++t) {
      float* o = out + ((size_t)n * T + t) * C;
      const float* e = wte + (size_t)tokens[(size_t)n * T + t] * C;
      const float* p = wpe + (size_t)t * C;
      for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
    }
}

void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int N, int T, int C) {
  for (int n = 0; n < N; ++n)
    for (int t = 0; t < T; ++t) {
      const float* d = dout + ((size_t)n * T + t) * C;
      float* de = dwte + (size_t)tokens[(size_t)n * T + t] * C;
      float* dp = dwpe + (size_t)t * C;
      for (int c = 0; c < C; ++c) {
        de[c] += d[c];
        dp[c] += d[c];
      }
    }
}

// ---------------------------------------------------------------------------
// Float vectors as wide as the CPU's registers (GCC vector extensions): 16 lanes
// in a zmm with AVX-512, 8 in a ymm with AVX/AVX2, 4 in an xmm otherwise. A
// wider type than the registers is not split cleanly: GCC moves it through the
// stack, which made the attention kernels 8x slower on an AVX2 CPU. Sums over a
// row keep kW partial sums and add them up in a fixed order at the end, so they
// vectorise and stay deterministic (for a given ISA; other CPUs give other bits
// anyway, through OpenBLAS's kernels).

namespace {

#if defined(CHARGPT_OPS_WIDTH)  // the tests' builds of each width (tests/ops/ops_width.inc)
constexpr int kW = CHARGPT_OPS_WIDTH;
#elif defined(__AVX512F__)
constexpr int kW = 16;  // floats per vf
#elif defined(__AVX__)
constexpr int kW = 8;
#else
constexpr int kW = 4;
#endif
using vf = float __attribute__((vector_size(kW * sizeof(float))));
using vi = int32_t __attribute__((vector_size(kW * sizeof(int32_t))));

inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void storev(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

// Σ of the kW lanes, in lane order.
inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < kW; ++i) s += v[i];
  return s;
}

// Σ_c x[c] over a row of C floats.
inline float row_sum(const float* x, int C) {
  vf acc = {};
  int c = 0;
  for (; c + kW <= C; c += kW) acc += loadv(x + c);
  float s = hsum(acc);
  for (; c < C; ++c) s += x[c];
  return s;
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int R, int C, uint16_t* out16) {
  constexpr float eps = 1e-5f;
  for (int r = 0; r < R; ++r) {
    const float* x = inp + (size_t)r * C;
    const float m = row_sum(x, C) / C;
    vf acc = {};
    int c = 0;
    for (; c + kW <= C; c += kW) {
      const vf d = loadv(x + c) - m;
      acc += d * d;
    }
    float var = hsum(acc);
    for (; c < C; ++c) var += (x[c] - m) * (x[c] - m);
    const float s = 1.f / std::sqrt(var / C + eps);
    float* o = out + (size_t)r * C;
    for (c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c] + bias[c];
    if (out16) to_bf16(out16 + (size_t)r * C, o, C);  // the row just written, still in L1
    mean[r] = m;
    rstd[r] = s;
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int R, int C) {
  for (int r = 0; r < R; ++r) {
    const float* d = dout + (size_t)r * C;
    const float* x = inp + (size_t)r * C;
    float* dx = dinp + (size_t)r * C;
    const float m = mean[r], s = rstd[r];
    // dnorm = d * w; dx = s * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
    vf acc_dnorm = {}, acc_dnorm_norm = {};
    int c = 0;
    for (; c + kW <= C; c += kW) {
      const vf norm = (loadv(x + c) - m) * s;
      const vf dnorm = loadv(d + c) * loadv(weight + c);
      acc_dnorm += dnorm;
      acc_dnorm_norm += dnorm * norm;
    }
    float dnorm_mean = hsum(acc_dnorm), dnorm_norm_mean = hsum(acc_dnorm_norm);
    for (; c < C; ++c) {
      const float norm = (x[c] - m) * s;
      const float dnorm = d[c] * weight[c];
      dnorm_mean += dnorm;
      dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean /= C;
    dnorm_norm_mean /= C;
    for (c = 0; c + kW <= C; c += kW) {
      const vf dv = loadv(d + c);
      const vf norm = (loadv(x + c) - m) * s;
      const vf dnorm = dv * loadv(weight + c);
      storev(dbias + c, loadv(dbias + c) + dv);
      storev(dweight + c, loadv(dweight + c) + norm * dv);
      storev(dx + c, loadv(dx + c) + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s);
    }
    for (; c < C; ++c) {
      const float norm = (x[c] - m) * s;
      const float dnorm = d[c] * weight[c];
      dbias[c] += d[c];
      dweight[c] += norm * d[c];
      dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
  }
}

// 2^n for a whole number n (|n| <= 127), straight into the exponent bits.
static inline float pow2i(float n) { return std::bit_cast<float>(((int32_t)n + 127) << 23); }
static inline vf pow2i(vf n) {
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}

// exp(x) without libm, on a float or on a vf: Cephes' range reduction and
// degree-5 polynomial (about 2 ulp), branch-free so that the softmax and GELU
// loops vectorise. libm's tanhf alone was 40% of a training step before this.
template <class V>
inline V exp_approx(V x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const V n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest
  const V r = x - n * 0.693359375f - n * -2.12194440e-4f;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V e = p * r * r + r + 1.f;
  return e * pow2i(n);
}

// ---------------------------------------------------------------------------
// Causal attention kernels. Per (sequence, head) the products are small (T x T x
// hd, e.g. 64 x 64 x 32): sgemm on the full square wastes half its work above
// the diagonal and spends much of the rest on packing. These kernels skip the
// upper triangle in 4-row blocks and keep their accumulators in registers,
// kW floats wide.
// Every sum runs over its index in a fixed order, so results never depend on
// the caller's threading.

namespace {

constexpr int kRows = 4;  // rows per register block
// Column groups per register block in the P·V-shaped kernels: 4 rows x 2 groups
// = 8 accumulators, with room to spare in 16 (AVX2) or 32 (AVX-512) registers.
constexpr int kPair = 2;

int padded(int T) { return (T + kW - 1) / kW * kW; }

// XT[hd, Tp] = X[T, hd] (row stride ldx) transposed, columns T..Tp zero.
void transpose_pad(float* XT, const float* X, int ldx, int T, int hd) {
  const int Tp = padded(T);
  for (int d = 0; d < hd; ++d) {
    float* row = XT + (size_t)d * Tp;
    for (int t = 0; t < T; ++t) row[t] = X[(size_t)t * ldx + d];
    for (int t = T; t < Tp; ++t) row[t] = 0.f;
  }
}

// S[i, j] = alpha · Σ_d A[i, d] · BT[d, j] for the NR rows from i0, over the
// kW-column groups up to the one holding column i0+NR-1 (the causal part plus
// at most kW-1 columns of padding). S and BT have row stride Tp.
// NC groups at a time share each A[i, d] among them: 4 rows x 2 groups = 8
// independent sums, enough to cover the FMA latency (4 were not). The order of
// each sum over d is the same for any NC, so the result's bits are too.
template <int NR, int NC>
inline void scores_block(float* S, const float* A, int lda, const float* BT, int Tp, int i0, int g, int hd,
                         float alpha) {
  vf acc[NR][NC] = {};
  const float* b = BT + g * kW;
  for (int d = 0; d < hd; ++d) {
    vf bv[NC];
    for (int k = 0; k < NC; ++k) bv[k] = loadv(b + (size_t)d * Tp + k * kW);
    for (int r = 0; r < NR; ++r) {
      const float a = A[(size_t)(i0 + r) * lda + d];
      for (int k = 0; k < NC; ++k) acc[r][k] += a * bv[k];
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int k = 0; k < NC; ++k) storev(S + (size_t)(i0 + r) * Tp + (g + k) * kW, acc[r][k] * alpha);
}
template <int NR>
void scores_rows(float* S, const float* A, int lda, const float* BT, int Tp, int i0, int hd, float alpha) {
  const int groups = (i0 + NR - 1) / kW + 1;
  int g = 0;
  for (; g + kPair <= groups; g += kPair) scores_block<NR, kPair>(S, A, lda, BT, Tp, i0, g, hd, alpha);
  for (; g < groups; ++g) scores_block<NR, 1>(S, A, lda, BT, Tp, i0, g, hd, alpha);
}
void causal_scores(float* S, const float* A, int lda, const float* BT, int T, int hd, float alpha) {
  const int Tp = padded(T);
  int i = 0;
  for (; i + kRows <= T; i += kRows) scores_rows<kRows>(S, A, lda, BT, Tp, i, hd, alpha);
  for (; i < T; ++i) scores_rows<1>(S, A, lda, BT, Tp, i, hd, alpha);
}

// Y[i, :hd] = alpha · Σ_{j<=i} P[i, j] · V[j, :hd] for the NR rows from i0.
// Needs P[i, j] = 0 for i < j < i0+NR (zeros right of the diagonal in the block).
// Columns go NC groups of kW at a time, sharing each P[i, j] among them.
template <int NR, int NC>
inline void lower_times_block(float* Y, int ldy, const float* P, int ldp, const float* V, int ldv, int i0, int c,
                              float alpha) {
  vf acc[NR][NC] = {};
  for (int j = 0; j < i0 + NR; ++j) {
    vf vv[NC];
    for (int k = 0; k < NC; ++k) vv[k] = loadv(V + (size_t)j * ldv + c + k * kW);
    for (int r = 0; r < NR; ++r) {
      const float p = P[(size_t)(i0 + r) * ldp + j];
      for (int k = 0; k < NC; ++k) acc[r][k] += p * vv[k];
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int k = 0; k < NC; ++k) storev(Y + (size_t)(i0 + r) * ldy + c + k * kW, acc[r][k] * alpha);
}
template <int NR>
void lower_times_rows(float* Y, int ldy, const float* P, int ldp, const float* V, int ldv, int i0, int hd,
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
void lower_times(float* Y, int ldy, const float* P, int ldp, const float* V, int ldv, int T, int hd, float alpha) {
  int i = 0;
  for (; i + kRows <= T; i += kRows) lower_times_rows<kRows>(Y, ldy, P, ldp, V, ldv, i, hd, alpha);
  for (; i < T; ++i) lower_times_rows<1>(Y, ldy, P, ldp, V, ldv, i, hd, alpha);
}

// Z[j, :hd] = alpha · Σ_{i>=j} P[i, j] · X[i, :hd] for the NR rows from j0.
// Needs P[i, j] = 0 for j0 <= i < j (zeros above the diagonal in the block).
template <int NR, int NC>
inline void lower_t_times_block(float* Z, int ldz, const float* P, int ldp, const float* X, int ldx, int j0, int T,
                                int c, float alpha) {
  vf acc[NR][NC] = {};
  for (int i = j0; i < T; ++i) {
    vf xv[NC];
    for (int k = 0; k < NC; ++k) xv[k] = loadv(X + (size_t)i * ldx + c + k * kW);
    for (int r = 0; r < NR; ++r) {
      const float p = P[(size_t)i * ldp + j0 + r];
      for (int k = 0; k < NC; ++k) acc[r][k] += p * xv[k];
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int k = 0; k < NC; ++k) storev(Z + (size_t)(j0 + r) * ldz + c + k * kW, acc[r][k] * alpha);
}
template <int NR>
void lower_t_times_rows(float* Z, int ldz, const float* P, int ldp, const float* X, int ldx, int j0, int T, int hd,
                        float alpha) {
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
void lower_t_times(float* Z, int ldz, const float* P, int ldp, const float* X, int ldx, int T, int hd, float alpha) {
  int j = 0;
  for (; j + kRows <= T; j += kRows) lower_t_times_rows<kRows>(Z, ldz, P, ldp, X, ldx, j, T, hd, alpha);
  for (; j < T; ++j) lower_t_times_rows<1>(Z, ldz, P, ldp, X, ldx, j, T, hd, alpha);
}

// Softmax rows go kW columns at a time, including the group that holds the
// diagonal, with the lanes right of it masked; only where that group would run
// past column T (T not a multiple of kW) does the rest of the row go scalar.
template <int... K>
constexpr vf lane_index(std::integer_sequence<int, K...>) {
  return vf{(float)K...};
}
constexpr vf kLane = lane_index(std::make_integer_sequence<int, kW>{});  // {0, 1, ..., kW-1}

// Columns [0, nv) of row i go on vectors.
int vector_columns(int i, int T) {
  const int group_end = (i + 1 + kW - 1) / kW * kW;
  return group_end <= T ? group_end : (i + 1) / kW * kW;
}

// p[0..i] = softmax(s[0..i]), p[i+1..T) = 0. s has room for whole groups of kW
// up to the one holding column i (the scores kernel fills them).
void causal_softmax_row(float* p, const float* s, int i, int T) {
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
void causal_softmax_backward_row(float* d, const float* p, int i, int T, int zero_end) {
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

}  // namespace

size_t attention_scratch_floats(int T, int hd) { return (size_t)(T + hd) * padded(T); }

void attention_head_forward(float* y, int ldy, float* P, float* scratch, const float* q, int T, int C, int hd) {
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

void attention_forward(float* out, float* att_probs, float* scratch, const float* qkv, int N, int T, int C, int NH) {
  const int hd = C / NH;
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < NH; ++h)
      attention_head_forward(out + (size_t)n * T * C + h * hd, C, att_probs + ((size_t)n * NH + h) * T * T, scratch,
                             qkv + (size_t)n * T * 3 * C + h * hd, T, C, hd);
}

void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att_probs,
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

static constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)

// 0.5·(1 + tanh(u)) = sigmoid(2u) = e/(e+1) with e = exp(2u), and 1 - sigmoid =
// 1/(e+1): neither side cancels, so GELU and its slope stay accurate for any x.
// Templated on float or vf, so the vector loops and their scalar tails share one formula.
template <class V>
struct Sigmoid2 {
  V s, one_minus_s;
};
template <class V>
inline Sigmoid2<V> sigmoid2(V u) {
  const V e = exp_approx(2.f * u);
  const V inv = 1.f / (e + 1.f);
  return {e * inv, inv};
}
template <class V>
inline V gelu_value(V x) {
  return x * sigmoid2(kGeluC * (x + 0.044715f * x * x * x)).s;
}
// d/dx x·s(u(x)) = s + x · 2s(1-s) · u'(x), since 1 - tanh² = 4s(1-s)
template <class V>
inline V gelu_slope(V x) {
  const Sigmoid2<V> g = sigmoid2(kGeluC * (x + 0.044715f * x * x * x));
  return g.s + 2.f * x * g.s * g.one_minus_s * kGeluC * (1.f + 3.f * 0.044715f * x * x);
}

void gelu_forward(float* out, const float* inp, size_t n, uint16_t* out16) {
  // In blocks of 1024 floats (a multiple of kW), so that the bf16 copy reads them from L1.
  constexpr size_t kBlock = 1024;
  size_t i = 0;
  while (i + kW <= n) {
    const size_t b0 = i, b1 = std::min(n, b0 + kBlock);
    for (; i + kW <= b1; i += kW) storev(out + i, gelu_value(loadv(inp + i)));
    if (out16) to_bf16(out16 + b0, out + b0, i - b0);
  }
  const size_t t0 = i;
  for (; i < n; ++i) out[i] = gelu_value(inp[i]);
  if (out16) to_bf16(out16 + t0, out + t0, n - t0);
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  size_t i = 0;
  for (; i + kW <= n; i += kW) storev(dinp + i, gelu_slope(loadv(inp + i)) * loadv(dout + i));
  for (; i < n; ++i) dinp[i] = gelu_slope(inp[i]) * dout[i];
}

void residual_forward(float* out, const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void softmax_crossentropy_forward(float* losses, float* probs, const float* logits, const int32_t* targets,
                                  int R, int V) {
  for (int r = 0; r < R; ++r) {
    const float* l = logits + (size_t)r * V;
    float* p = probs + (size_t)r * V;
    const float l_target = l[targets[r]];  // read before p (which may alias l) is written
    float mx = l[0];
    for (int i = 1; i < V; ++i) mx = l[i] > mx ? l[i] : mx;
    float sum = 0.f;
    for (int i = 0; i < V; ++i) {
      p[i] = exp_approx(l[i] - mx);
      sum += p[i];
    }
    const float inv = 1.f / sum;
    for (int i = 0; i < V; ++i) p[i] *= inv;
    // -log softmax from the logits directly: exact even when the probability underflows.
    losses[r] = std::log(sum) + (mx - l_target);  // (mx - l_target) exact first: no large-logit rounding
  }
}

void softmax_crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, float dloss, int R,
                                   int V) {
  for (int r = 0; r < R; ++r) {
    const float* p = probs + (size_t)r * V;
    float* d = dlogits + (size_t)r * V;
    for (int i = 0; i < V; ++i) d[i] = p[i] * dloss;
    d[targets[r]] -= dloss;
  }
}

// ---------------------------------------------------------------------------
// Matrix-vector rows (the KV-cache step): 16 lanes of partial sums per row,
// reduced by a fixed tree, so a row's value never depends on how rows are split.

namespace {

constexpr int kLanes = 16;

// Four rows at once (x loaded once per chunk); each row's 16 lane sums, then a fixed tree.
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

void fill_zero(float* p, size_t n) { std::memset(p, 0, n * sizeof(float)); }

double loss_sum(const float* losses, size_t n) {
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += losses[i];  // in order: deterministic
  return sum;
}

}  // namespace chargpt
