#pragma once
#include <cstddef>

namespace chargpt {

struct AdamW {
  float beta1 = 0.9f;
  float beta2 = 0.99f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
};

// One AdamW step (PyTorch's formulation: decoupled decay p -= lr·wd·p, then the
// bias-corrected Adam update) over n values. `step` counts from 1. grad_scale
// multiplies the gradient first (global-norm clipping). decay: apply weight decay.
void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, const AdamW& opt, float lr,
                  int step, float grad_scale, bool decay);

// Σ x[i]² in double over n floats: 8 partial sums (lanes i mod 8), added in lane
// order at the end; a fixed order, so the result depends on nothing but x.
double sum_of_squares(const float* x, size_t n);

// nanoGPT's schedule: linear warmup over `warmup` steps, cosine decay from lr to
// min_lr until decay_steps, min_lr after. `it` counts from 0.
float lr_at(int it, float lr, float min_lr, int warmup, int decay_steps);

}  // namespace chargpt
