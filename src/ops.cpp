#include "chargpt/ops.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "chargpt/matmul.h"

namespace chargpt {

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
                       const float* bias, int R, int C) {
  constexpr float eps = 1e-5f;
  for (int r = 0; r < R; ++r) {
    const float* x = inp + (size_t)r * C;
    float sum = 0.f;
    for (int c = 0; c < C; ++c) sum += x[c];
    const float m = sum / C;
    float var = 0.f;
    for (int c = 0; c < C; ++c) var += (x[c] - m) * (x[c] - m);
    const float s = 1.f / std::sqrt(var / C + eps);
    float* o = out + (size_t)r * C;
    for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c] + bias[c];
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
    float dnorm_mean = 0.f, dnorm_norm_mean = 0.f;
    for (int c = 0; c < C; ++c) {
      const float norm = (x[c] - m) * s;
      const float dnorm = d[c] * weight[c];
      dnorm_mean += dnorm;
      dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean /= C;
    dnorm_norm_mean /= C;
    for (int c = 0; c < C; ++c) {
      const float norm = (x[c] - m) * s;
      const float dnorm = d[c] * weight[c];
      dbias[c] += d[c];
      dweight[c] += norm * d[c];
      dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
  }
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int R, int IC, int OC) {
  if (bias) {
    for (int r = 0; r < R; ++r) std::memcpy(out + (size_t)r * OC, bias, sizeof(float) * OC);
  }
  sgemm(false, true, R, OC, IC, 1.f, inp, IC, weight, IC, bias ? 1.f : 0.f, out, OC);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int R, int IC, int OC) {
  if (dinp) sgemm(false, false, R, IC, OC, 1.f, dout, OC, weight, IC, 0.f, dinp, IC);
  sgemm(true, false, OC, IC, R, 1.f, dout, OC, inp, IC, 1.f, dweight, IC);
  if (dbias) {
    for (int r = 0; r < R; ++r) {
      const float* d = dout + (size_t)r * OC;
      for (int o = 0; o < OC; ++o) dbias[o] += d[o];
    }
  }
}

// exp(x) in float without libm: Cephes' range reduction and degree-5 polynomial
// (about 2 ulp), branch-free so that the softmax and GELU loops vectorise.
// libm's tanhf alone was 40% of a training step before this.
static inline float exp_approx(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest
  const float r = x - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.f;
  return e * std::bit_cast<float>(((int32_t)n + 127) << 23);
}

void attention_head_forward(float* y, int ldy, float* P, const float* q, int T, int C, int hd) {
  const int C3 = 3 * C;
  const float* k = q + C;
  const float* v = q + 2 * C;
  // Scores for the whole square; the causal half above the diagonal is zeroed below.
  sgemm(false, true, T, T, hd, 1.f / std::sqrt((float)hd), q, C3, k, C3, 0.f, P, T);
  for (int i = 0; i < T; ++i) {
    float* row = P + (size_t)i * T;
    float mx = row[0];
    for (int j = 1; j <= i; ++j) mx = row[j] > mx ? row[j] : mx;
    float sum = 0.f;
    for (int j = 0; j <= i; ++j) {
      row[j] = exp_approx(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.f / sum;
    for (int j = 0; j <= i; ++j) row[j] *= inv;
    for (int j = i + 1; j < T; ++j) row[j] = 0.f;
  }
  sgemm(false, false, T, hd, T, 1.f, P, T, v, C3, 0.f, y, ldy);
}

void attention_forward(float* out, float* att_probs, const float* qkv, int N, int T, int C, int NH) {
  const int hd = C / NH;
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < NH; ++h)
      attention_head_forward(out + (size_t)n * T * C + h * hd, C, att_probs + ((size_t)n * NH + h) * T * T,
                             qkv + (size_t)n * T * 3 * C + h * hd, T, C, hd);
}

void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att_probs,
                        int N, int T, int C, int NH) {
  const int hd = C / NH, C3 = 3 * C;
  const float scale = 1.f / std::sqrt((float)hd);
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
      float* dS = scratch;
      sgemm(false, true, T, T, hd, 1.f, dy, C, v, C3, 0.f, dS, T);      // dP = dy · vᵀ
      sgemm(true, false, T, hd, T, 1.f, P, T, dy, C, 0.f, dv, C3);      // dv = Pᵀ · dy
      for (int i = 0; i < T; ++i) {                                     // softmax backward
        const float* p = P + (size_t)i * T;
        float* d = dS + (size_t)i * T;
        float dot = 0.f;
        for (int j = 0; j <= i; ++j) dot += p[j] * d[j];
        for (int j = 0; j <= i; ++j) d[j] = p[j] * (d[j] - dot);
        for (int j = i + 1; j < T; ++j) d[j] = 0.f;
      }
      sgemm(false, false, T, hd, T, scale, dS, T, k, C3, 0.f, dq, C3);  // dq = dS · k / sqrt(hd)
      sgemm(true, false, T, hd, T, scale, dS, T, q, C3, 0.f, dk, C3);   // dk = dSᵀ · q / sqrt(hd)
    }
}

static constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)

// 0.5·(1 + tanh(u)) = sigmoid(2u) = e/(e+1) with e = exp(2u), and 1 - sigmoid =
// 1/(e+1): neither side cancels, so GELU and its slope stay accurate for any x.
struct Sigmoid2 {
  float s, one_minus_s;
};
static inline Sigmoid2 sigmoid2(float u) {
  const float e = exp_approx(2.f * u);
  const float inv = 1.f / (e + 1.f);
  return {e * inv, inv};
}

void gelu_forward(float* out, const float* inp, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float x = inp[i];
    out[i] = x * sigmoid2(kGeluC * (x + 0.044715f * x * x * x)).s;
  }
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const Sigmoid2 g = sigmoid2(kGeluC * (x + 0.044715f * x * x * x));
    // d/dx x·s(u(x)) = s + x · 2s(1-s) · u'(x), since 1 - tanh² = 4s(1-s)
    const float grad = g.s + 2.f * x * g.s * g.one_minus_s * kGeluC * (1.f + 3.f * 0.044715f * x * x);
    dinp[i] = grad * dout[i];
  }
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

}  // namespace chargpt
