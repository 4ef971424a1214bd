#include "model/optim.h"

#include <cmath>
#include <cstring>
#include <numbers>

namespace chargpt {

void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, const AdamW& opt, float lr,
                  int step, float grad_scale, bool decay) {
  const float b1 = opt.beta1, b2 = opt.beta2;
  const float bc1 = 1.f - std::pow(b1, (float)step);
  const float bc2 = 1.f - std::pow(b2, (float)step);
  const float step_size = lr / bc1;
  const float inv_sqrt_bc2 = 1.f / std::sqrt(bc2);
  const float keep = decay ? 1.f - lr * opt.weight_decay : 1.f;
  for (size_t i = 0; i < n; ++i) {
    const float g = grads[i] * grad_scale;
    const float mi = b1 * m[i] + (1.f - b1) * g;
    const float vi = b2 * v[i] + (1.f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] = params[i] * keep - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + opt.eps);
  }
}

double sum_of_squares(const float* x, size_t n) {
  // 8 double lanes, summed in lane order at the end. Held as two halves of 4 (one
  // ymm each): a 64-byte vector on a CPU without AVX-512 goes through the stack.
  // Each lane sees the same operations either way, so the sum has the same bits.
  using v4f = float __attribute__((vector_size(16)));
  using v4d = double __attribute__((vector_size(32)));
  v4d lo = {}, hi = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v4f a, b;
    std::memcpy(&a, x + i, sizeof a);
    std::memcpy(&b, x + i + 4, sizeof b);
    const v4d da = __builtin_convertvector(a, v4d), db = __builtin_convertvector(b, v4d);
    lo += da * da;
    hi += db * db;
  }
  double s = 0;
  for (int k = 0; k < 4; ++k) s += lo[k];
  for (int k = 0; k < 4; ++k) s += hi[k];
  for (; i < n; ++i) s += (double)x[i] * x[i];
  return s;
}

float lr_at(int it, float lr, float min_lr, int warmup, int decay_steps) {
  if (it < warmup) return lr * (float)(it + 1) / (float)(warmup + 1);
  if (it > decay_steps) return min_lr;
  if (decay_steps <= warmup) return min_lr;
  const double ratio = (double)(it - warmup) / (double)(decay_steps - warmup);
  const double coeff = 0.5 * (1.0 + std::cos(std::numbers::pi * ratio));
  return (float)(min_lr + coeff * (lr - min_lr));
}

}  // namespace chargpt
