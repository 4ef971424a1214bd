// The optimizer pieces: AdamW against a double-precision transcription of
// PyTorch's formula, the learning-rate schedule at its landmarks, and the
// gradient-norm sum against a long-double sum.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "model/optim.h"
#include "base/rng.h"

using namespace chargpt;

namespace {

// torch.optim.AdamW, one parameter, in double: p *= 1 - lr·wd; m, v updated;
// p -= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps).
void adamw_ref(double& p, double& m, double& v, double g, const AdamW& o, double lr, int step, bool decay) {
  if (decay) p *= 1.0 - lr * o.weight_decay;
  m = o.beta1 * m + (1.0 - o.beta1) * g;
  v = o.beta2 * v + (1.0 - o.beta2) * g * g;
  const double bc1 = 1.0 - std::pow((double)o.beta1, step), bc2 = 1.0 - std::pow((double)o.beta2, step);
  p -= lr / bc1 * m / (std::sqrt(v) / std::sqrt(bc2) + o.eps);
}

}  // namespace

TEST_CASE("optim: AdamW matches PyTorch's formula over several steps, with and without decay and scaling") {
  const AdamW opt;  // beta1 0.9, beta2 0.99, eps 1e-8, weight decay 0.1
  for (bool decay : {false, true}) {
    CAPTURE(decay);
    const size_t n = 37;  // not a multiple of any vector width
    Rng rng(11);
    std::vector<float> p(n), m(n, 0.f), v(n, 0.f), g(n);
    std::vector<double> pd(n), md(n, 0.0), vd(n, 0.0);
    for (size_t i = 0; i < n; ++i) pd[i] = p[i] = (float)rng.normal();
    const std::vector<float> p0 = p;
    double worst = 0;
    for (int step = 1; step <= 5; ++step) {
      const float lr = 1e-3f * step, scale = step == 3 ? 0.25f : 1.f;
      for (size_t i = 0; i < n; ++i) g[i] = (float)(rng.normal() * (i % 5 == 0 ? 1e-4 : 1.0));
      adamw_update(p.data(), g.data(), m.data(), v.data(), n, opt, lr, step, scale, decay);
      for (size_t i = 0; i < n; ++i) {
        adamw_ref(pd[i], md[i], vd[i], (double)g[i] * scale, opt, lr, step, decay);
        worst = std::max(worst, std::fabs(p[i] - pd[i]));
      }
    }
    // Adam's step is about lr per step whatever the gradient's size; the sum
    // of lr over the five steps is 0.015, so a wrong term shows as ~1e-3.
    CHECK(worst < 1e-6);
    // and the parameters did move by about that much (the check above is not vacuous)
    double moved = 0;
    for (size_t i = 0; i < n; ++i) moved = std::max(moved, (double)std::fabs(p[i] - p0[i]));
    CHECK(moved > 5e-3);
  }
}

TEST_CASE("optim: learning-rate schedule (linear warmup, cosine to min_lr, then min_lr)") {
  const float lr = 1e-3f, min_lr = 1e-4f;
  const int warmup = 100, decay = 2000;
  CHECK(lr_at(0, lr, min_lr, warmup, decay) == doctest::Approx(lr / 101).epsilon(1e-6));
  CHECK(lr_at(99, lr, min_lr, warmup, decay) == doctest::Approx(lr * 100 / 101).epsilon(1e-6));
  CHECK(lr_at(100, lr, min_lr, warmup, decay) == doctest::Approx(lr).epsilon(1e-6));
  CHECK(lr_at(1050, lr, min_lr, warmup, decay) == doctest::Approx((lr + min_lr) / 2).epsilon(1e-6));
  CHECK(lr_at(2000, lr, min_lr, warmup, decay) == doctest::Approx(min_lr).epsilon(1e-6));
  CHECK(lr_at(5000, lr, min_lr, warmup, decay) == min_lr);
  // monotone down after warmup
  for (int it = warmup; it < decay; it += 37)
    CHECK(lr_at(it + 1, lr, min_lr, warmup, decay) <= lr_at(it, lr, min_lr, warmup, decay));
}

TEST_CASE("optim: sum_of_squares matches a long-double sum for every tail length") {
  Rng rng(12);
  for (size_t n : {0, 1, 7, 8, 9, 15, 16, 17, 1000, 16384}) {
    CAPTURE(n);
    std::vector<float> x(n);
    for (auto& e : x) e = (float)(rng.normal() * 3.0);
    long double want = 0;
    for (float e : x) want += (long double)e * e;
    const double got = sum_of_squares(x.data(), n);
    CHECK(std::fabs(got - (double)want) <= 1e-13 * (double)want + 1e-300);
  }
  const float a[3] = {3.f, 4.f, 12.f};
  CHECK(sum_of_squares(a, 3) == 169.0);
}
