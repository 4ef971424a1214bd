#pragma once
// The whole GPT forward in double, built from the reference ops: the yardstick
// for the fast float model's loss and for numerical gradients.
#include <cmath>
#include <vector>

#include "model/model.h"
#include "ops/ref_ops.h"

namespace chargpt::test {

// Mean loss over N sequences of t tokens, parameters given as a double block in
// the same layout as the float block.
inline double ref_gpt_loss(const Config& cfg, const std::vector<double>& p, const int32_t* in, const int32_t* tg,
                           int N, int t) {
  const int C = cfg.n_embd, V = cfg.vocab_size, NH = cfg.n_head, R = N * t;
  const auto specs = param_specs(cfg);
  size_t k = 0;
  auto next = [&]() { return p.data() + specs[k++].offset; };
  const double* wte = next();
  const double* wpe = next();
  std::vector<double> x(R * C), ln(R * C), mean(R), rstd(R), qkv(R * 3 * C), probs(N * NH * t * t), y(R * C),
      tmp(R * C), fc(R * 4 * C), g(R * 4 * C);
  ref::encoder_forward(x.data(), in, wte, wpe, N, t, C);
  for (int l = 0; l < cfg.n_layer; ++l) {
    const double *ln1w = next(), *ln1b = next(), *qkvw = next(), *qkvb = next(), *apw = next(), *apb = next();
    const double *ln2w = next(), *ln2b = next(), *fcw = next(), *fcb = next(), *fpw = next(), *fpb = next();
    ref::layernorm_forward(ln.data(), mean.data(), rstd.data(), x.data(), ln1w, ln1b, R, C);
    ref::matmul_forward(qkv.data(), ln.data(), qkvw, qkvb, R, C, 3 * C);
    ref::attention_forward(y.data(), probs.data(), qkv.data(), N, t, C, NH);
    ref::matmul_forward(tmp.data(), y.data(), apw, apb, R, C, C);
    ref::residual_forward(x.data(), x.data(), tmp.data(), x.size());
    ref::layernorm_forward(ln.data(), mean.data(), rstd.data(), x.data(), ln2w, ln2b, R, C);
    ref::matmul_forward(fc.data(), ln.data(), fcw, fcb, R, C, 4 * C);
    ref::gelu_forward(g.data(), fc.data(), g.size());
    ref::matmul_forward(tmp.data(), g.data(), fpw, fpb, R, 4 * C, C);
    ref::residual_forward(x.data(), x.data(), tmp.data(), x.size());
  }
  const double *lnfw = next(), *lnfb = next();
  ref::layernorm_forward(ln.data(), mean.data(), rstd.data(), x.data(), lnfw, lnfb, R, C);
  std::vector<double> logits(R * V), losses(R);
  ref::matmul_forward(logits.data(), ln.data(), wte, (const double*)nullptr, R, C, V);
  ref::softmax_crossentropy_forward(losses.data(), logits.data(), logits.data(), tg, R, V);
  double sum = 0;
  for (double v : losses) sum += v;
  return sum / R;
}

}  // namespace chargpt::test
