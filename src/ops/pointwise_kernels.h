#pragma once
// LayerNorm (per row) and GELU (per element), forward and backward: templates
// on the vector width W (vec.h), instantiated at kNativeWidth for the library
// by pointwise.cpp.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "ops/ops.h"
#include "ops/vec.h"

namespace chargpt {

inline constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)

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

template <int W>
struct PointwiseKernels : Vec<W> {
  using typename Vec<W>::vf;
  using Vec<W>::loadv;
  using Vec<W>::storev;
  using Vec<W>::hsum;
  using Vec<W>::row_sum;
  static constexpr int kW = W;

  static void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
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

  static void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
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
        if (dweight) {
          storev(dbias + c, loadv(dbias + c) + dv);
          storev(dweight + c, loadv(dweight + c) + norm * dv);
        }
        storev(dx + c, loadv(dx + c) + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s);
      }
      for (; c < C; ++c) {
        const float norm = (x[c] - m) * s;
        const float dnorm = d[c] * weight[c];
        if (dweight) {
          dbias[c] += d[c];
          dweight[c] += norm * d[c];
        }
        dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
      }
    }
  }

  static void gelu_forward(float* out, const float* inp, size_t n, uint16_t* out16) {
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

  static void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
    size_t i = 0;
    for (; i + kW <= n; i += kW) storev(dinp + i, gelu_slope(loadv(inp + i)) * loadv(dout + i));
    for (; i < n; ++i) dinp[i] = gelu_slope(inp[i]) * dout[i];
  }
};

}  // namespace chargpt
