// The elementwise and per-row ops: the bf16 conversion, the embeddings,
// LayerNorm and GELU (pointwise_kernels.h, at this build's vector width), the
// residual add, the softmax-cross-entropy loss.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "ops/ops.h"
#include "ops/pointwise_kernels.h"
#include "ops/vec.h"

namespace chargpt {

using Native = PointwiseKernels<kNativeWidth>;

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

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int R, int C, uint16_t* out16) {
  Native::layernorm_forward(out, mean, rstd, inp, weight, bias, R, C, out16);
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int R, int C) {
  Native::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, R, C);
}

void layernorm_backward_params(float* dweight, float* dbias, const float* dout, const float* inp, const float* mean,
                               const float* rstd, int R, int C, int c0, int c1) {
  // The arithmetic of layernorm_backward's updates, element by element (no contraction into
  // FMAs in this build: -std=c++20), so that its vector and scalar columns give these bits.
  for (int r = 0; r < R; ++r) {
    const float* d = dout + (size_t)r * C;
    const float* x = inp + (size_t)r * C;
    const float m = mean[r], s = rstd[r];
    for (int c = c0; c < c1; ++c) {
      const float norm = (x[c] - m) * s;
      dbias[c] += d[c];
      dweight[c] += norm * d[c];
    }
  }
}

void gelu_forward(float* out, const float* inp, size_t n, uint16_t* out16) { Native::gelu_forward(out, inp, n, out16); }

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  Native::gelu_backward(dinp, inp, dout, n);
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

void fill_zero(float* p, size_t n) { std::memset(p, 0, n * sizeof(float)); }

double loss_sum(const float* losses, size_t n) {
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += losses[i];  // in order: deterministic
  return sum;
}

}  // namespace chargpt
