#pragma once
// Simple reference versions of every op, templated on the number type (tests
// use double, and complex-free central differences against them). Plain loops,
// written for obviousness, not speed; same signatures and conventions as ops.h.
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace chargpt::ref {

template <class F>
void encoder_forward(F* out, const int32_t* tokens, const F* wte, const F* wpe, int N, int T, int C) {
  for (int n = 0; n < N; ++n)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < C; ++c)
        out[(n * T + t) * C + c] = wte[tokens[n * T + t] * C + c] + wpe[t * C + c];
}

template <class F>
void encoder_backward(F* dwte, F* dwpe, const F* dout, const int32_t* tokens, int N, int T, int C) {
  for (int n = 0; n < N; ++n)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < C; ++c) {
        dwte[tokens[n * T + t] * C + c] += dout[(n * T + t) * C + c];
        dwpe[t * C + c] += dout[(n * T + t) * C + c];
      }
}

template <class F>
void layernorm_forward(F* out, F* mean, F* rstd, const F* inp, const F* w, const F* b, int R, int C) {
  for (int r = 0; r < R; ++r) {
    F m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += inp[r * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += (inp[r * C + c] - m) * (inp[r * C + c] - m);
    v /= C;
    const F s = F(1) / std::sqrt(v + F(1e-5));
    for (int c = 0; c < C; ++c) out[r * C + c] = (inp[r * C + c] - m) * s * w[c] + b[c];
    mean[r] = m;
    rstd[r] = s;
  }
}

// Derived directly from y = n*w + b, n = (x - m) * s, by the chain rule through m and s.
template <class F>
void layernorm_backward(F* dinp, F* dw, F* db, const F* dout, const F* inp, const F* w, const F* mean,
                        const F* rstd, int R, int C) {
  for (int r = 0; r < R; ++r) {
    const F m = mean[r], s = rstd[r];
    F dvar = 0, dmean = 0;  // var = mean((x-m)^2), s = (var+eps)^-1/2
    for (int c = 0; c < C; ++c) {
      const F xm = inp[r * C + c] - m;
      const F dn = dout[r * C + c] * w[c];
      dvar += dn * xm * F(-0.5) * s * s * s;
      dmean += -dn * s;
    }
    for (int c = 0; c < C; ++c) {
      const F xm = inp[r * C + c] - m;
      const F dn = dout[r * C + c] * w[c];
      dinp[r * C + c] += dn * s + dvar * F(2) * xm / F(C) + dmean / F(C);
      dw[c] += dout[r * C + c] * xm * s;
      db[c] += dout[r * C + c];
    }
  }
}

template <class F>
void matmul_forward(F* out, const F* inp, const F* w, const F* bias, int R, int IC, int OC) {
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < OC; ++o) {
      F acc = bias ? bias[o] : F(0);
      for (int i = 0; i < IC; ++i) acc += inp[r * IC + i] * w[o * IC + i];
      out[r * OC + o] = acc;
    }
}

template <class F>
void matmul_backward(F* dinp, F* dw, F* dbias, const F* dout, const F* inp, const F* w, int R, int IC, int OC) {
  if (dinp)
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < IC; ++i) {
        F acc = 0;
        for (int o = 0; o < OC; ++o) acc += dout[r * OC + o] * w[o * IC + i];
        dinp[r * IC + i] = acc;
      }
  for (int o = 0; o < OC; ++o)
    for (int i = 0; i < IC; ++i)
      for (int r = 0; r < R; ++r) dw[o * IC + i] += dout[r * OC + o] * inp[r * IC + i];
  if (dbias)
    for (int o = 0; o < OC; ++o)
      for (int r = 0; r < R; ++r) dbias[o] += dout[r * OC + o];
}

template <class F>
void attention_forward(F* out, F* probs, const F* qkv, int N, int T, int C, int NH) {
  const int hd = C / NH;
  const F scale = F(1) / std::sqrt(F(hd));
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < T; ++i) {
        F* p = probs + ((n * NH + h) * T + i) * T;
        const F* q = qkv + (n * T + i) * 3 * C + h * hd;
        F mx = -INFINITY;
        for (int j = 0; j <= i; ++j) {
          const F* k = qkv + (n * T + j) * 3 * C + C + h * hd;
          F s = 0;
          for (int d = 0; d < hd; ++d) s += q[d] * k[d];
          p[j] = s * scale;
          if (p[j] > mx) mx = p[j];
        }
        F sum = 0;
        for (int j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        for (int j = 0; j < T; ++j) p[j] = j <= i ? p[j] / sum : F(0);
        F* y = out + (n * T + i) * C + h * hd;
        for (int d = 0; d < hd; ++d) {
          F acc = 0;
          for (int j = 0; j <= i; ++j) acc += p[j] * qkv[(n * T + j) * 3 * C + 2 * C + h * hd + d];
          y[d] = acc;
        }
      }
}

// dqkv = ; O(T²·hd) per head: softmax backward row by row, no T³ Jacobian.
template <class F>
void attention_backward(F* dqkv, const F* dout, const F* qkv, const F* probs, int N, int T, int C, int NH) {
  const int hd = C / NH;
  const F scale = F(1) / std::sqrt(F(hd));
  for (int i = 0; i < N * T * 3 * C; ++i) dqkv[i] = 0;
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < T; ++i) {
        const F* p = probs + ((n * NH + h) * T + i) * T;
        const F* dy = dout + (n * T + i) * C + h * hd;
        // dp_j = dy · v_j ; dv_j += p_j dy
        F dp[4096];
        for (int j = 0; j <= i; ++j) {
          const F* v = qkv + (n * T + j) * 3 * C + 2 * C + h * hd;
          F* dv = dqkv + (n * T + j) * 3 * C + 2 * C + h * hd;
          F acc = 0;
          for (int d = 0; d < hd; ++d) {
            acc += dy[d] * v[d];
            dv[d] += p[j] * dy[d];
          }
          dp[j] = acc;
        }
        F dot = 0;
        for (int j = 0; j <= i; ++j) dot += p[j] * dp[j];
        const F* q = qkv + (n * T + i) * 3 * C + h * hd;
        F* dq = dqkv + (n * T + i) * 3 * C + h * hd;
        for (int j = 0; j <= i; ++j) {
          const F ds = p[j] * (dp[j] - dot) * scale;
          const F* k = qkv + (n * T + j) * 3 * C + C + h * hd;
          F* dk = dqkv + (n * T + j) * 3 * C + C + h * hd;
          for (int d = 0; d < hd; ++d) {
            dq[d] += ds * k[d];
            dk[d] += ds * q[d];
          }
        }
      }
}

template <class F>
F gelu(F x) {
  const F c = std::sqrt(F(2) / F(M_PI));
  return F(0.5) * x * (F(1) + std::tanh(c * (x + F(0.044715) * x * x * x)));
}

template <class F>
void gelu_forward(F* out, const F* inp, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = gelu(inp[i]);
}

template <class F>
void gelu_backward(F* dinp, const F* inp, const F* dout, size_t n) {
  const F c = std::sqrt(F(2) / F(M_PI));
  for (size_t i = 0; i < n; ++i) {
    const F x = inp[i];
    const F th = std::tanh(c * (x + F(0.044715) * x * x * x));
    const F du = c * (F(1) + F(3) * F(0.044715) * x * x);
    dinp[i] = (F(0.5) * (F(1) + th) + F(0.5) * x * (F(1) - th * th) * du) * dout[i];
  }
}

template <class F>
void residual_forward(F* out, const F* a, const F* b, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <class F>
void softmax_crossentropy_forward(F* losses, F* probs, const F* logits, const int32_t* targets, int R, int V) {
  for (int r = 0; r < R; ++r) {
    F mx = logits[r * V];
    for (int i = 1; i < V; ++i) mx = std::max(mx, logits[r * V + i]);
    F sum = 0;
    for (int i = 0; i < V; ++i) sum += std::exp(logits[r * V + i] - mx);
    const F lt = logits[r * V + targets[r]];
    for (int i = 0; i < V; ++i) probs[r * V + i] = std::exp(logits[r * V + i] - mx) / sum;
    losses[r] = std::log(sum) + mx - lt;
  }
}

template <class F>
void softmax_crossentropy_backward(F* dlogits, const F* probs, const int32_t* targets, F dloss, int R, int V) {
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < V; ++i) dlogits[r * V + i] = (probs[r * V + i] - F(i == targets[r])) * dloss;
}

}  // namespace chargpt::ref
