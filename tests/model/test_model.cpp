// The whole model: layout, forward against the double reference, every
// parameter's gradient against numerical derivatives, init loss, overfitting.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "model/model.h"
#include "base/rng.h"
#include "train/train.h"
#include "ref_model.h"
#include "support.h"

using namespace chargpt;

namespace {

// Parameters far from the init (test::random_params, spread 0.3) so that every gradient is sizable.
constexpr double kParamSpread = 0.3;

// A tiny model at random parameters with a random batch of N sequences, and a
// gradient computed by one forward + backward (accumulate: += into zeros, else =).
struct TinyBatch {
  Config cfg = test::tiny_config(7);
  int N, t = cfg.block_size;
  size_t P = num_params(cfg);
  FloatBuffer p{P};
  std::vector<int32_t> in, tg;
  Activations acts;
  TinyBatch(int n, uint64_t seed) : N(n), in((size_t)n * t), tg((size_t)n * t), acts(cfg, n) {
    test::random_params(cfg, p.data(), seed, kParamSpread);
    in = test::random_tokens(in.size(), cfg.vocab_size, seed + 1);
    tg = test::random_tokens(tg.size(), cfg.vocab_size, seed + 2);
  }
  void gradient(FloatBuffer& grad, bool accumulate = true) {
    if (accumulate) grad.zero();
    const ParamViews pv = param_views(cfg, p.data());
    gpt_forward(test::openblas_backend(), cfg, pv, acts, in.data(), tg.data(), N, t);
    gpt_backward(test::openblas_backend(), cfg, pv, param_views(cfg, grad.data()), acts, in.data(), tg.data(), N, t, 1.f / (N * t),
                 accumulate);
  }
};

}  // namespace

TEST_CASE("model: parameter layout follows nanoGPT's state dict") {
  Config cfg;  // baby: V 65, T 64, L 4, H 4, C 128
  const auto specs = param_specs(cfg);
  REQUIRE(specs.size() == 2 + 12 * 4 + 2);
  CHECK(specs[0].name == "transformer.wte.weight");
  CHECK(specs[0].shape == std::vector<int64_t>{65, 128});
  CHECK(specs[1].name == "transformer.wpe.weight");
  CHECK(specs[4].name == "transformer.h.0.attn.c_attn.weight");
  CHECK(specs[4].shape == std::vector<int64_t>{384, 128});
  CHECK(specs[12].name == "transformer.h.0.mlp.c_proj.weight");
  CHECK(specs[12].shape == std::vector<int64_t>{128, 512});
  CHECK(specs.back().name == "transformer.ln_f.bias");
  size_t offset = 0;
  for (const auto& s : specs) {
    CHECK(s.offset == offset);  // contiguous, in order
    offset += s.numel;
    CHECK(s.decay == (s.shape.size() == 2));
  }
  // 12·L·C² + biases/LN + embeddings, as nanoGPT counts it (lm_head tied)
  CHECK(num_params(cfg) == 809856);
  CHECK(offset == num_params(cfg));
}

TEST_CASE("model: init follows nanoGPT (std 0.02, residual projections 0.02/sqrt(2L), biases 0, LN 1)") {
  Config cfg;
  FloatBuffer p(num_params(cfg));
  init_params(cfg, p.data(), 1337);
  for (const auto& s : param_specs(cfg)) {
    double sum = 0, sq = 0;
    for (size_t i = 0; i < s.numel; ++i) {
      sum += p[s.offset + i];
      sq += (double)p[s.offset + i] * p[s.offset + i];
    }
    const double mean = sum / s.numel, sd = std::sqrt(sq / s.numel - mean * mean);
    CAPTURE(s.name);
    if (s.name.find(".ln_") != std::string::npos) {
      CHECK(mean == (s.name.ends_with(".weight") ? 1.0 : 0.0));
      CHECK(sd == 0.0);
    } else if (s.name.ends_with(".bias")) {
      CHECK(sq == 0.0);
    } else {
      const double want = s.name.ends_with("c_proj.weight") ? 0.02 / std::sqrt(8.0) : 0.02;
      CHECK(sd == doctest::Approx(want).epsilon(0.05));
      CHECK(std::abs(mean) < 4 * want / std::sqrt((double)s.numel));
    }
  }
}

TEST_CASE("model: fast float forward equals the double reference") {
  const Config cfg = test::tiny_config(7);
  const int N = 3, t = cfg.block_size;
  FloatBuffer p(num_params(cfg));
  test::random_params(cfg, p.data(), 7, kParamSpread);
  std::vector<int32_t> in(N * t), tg(N * t);
  in = test::random_tokens(in.size(), cfg.vocab_size, 1);
  tg = test::random_tokens(tg.size(), cfg.vocab_size, 2);
  Activations acts(cfg, N);
  const double fast = gpt_forward(test::openblas_backend(), cfg, param_views(cfg, p.data()), acts, in.data(), tg.data(), N, t) / (N * t);
  std::vector<double> pd(p.data(), p.data() + p.size());
  const double ref = test::ref_gpt_loss(cfg, pd, in.data(), tg.data(), N, t);
  CAPTURE(fast);
  CAPTURE(ref);
  CHECK(std::abs(fast - ref) < 1e-5 * std::max(1.0, std::abs(ref)));  // float vs double rounding
  // Shorter sequences (evaluation's last window) use the same weights, positions 0..t-1.
  const int t2 = 4;
  const double fast2 = gpt_forward(test::openblas_backend(), cfg, param_views(cfg, p.data()), acts, in.data(), tg.data(), 2, t2) / (2 * t2);
  const double ref2 = test::ref_gpt_loss(cfg, pd, in.data(), tg.data(), 2, t2);
  CHECK(std::abs(fast2 - ref2) < 1e-5 * std::max(1.0, std::abs(ref2)));
}

TEST_CASE("model: every parameter's gradient matches numerical derivatives") {
  // N = 2 full sequences: the tied wte gets gradient from both its uses and wpe from every position.
  TinyBatch b(2, 11);
  const Config& cfg = b.cfg;
  const int N = b.N, t = b.t;
  const size_t P = b.P;
  const auto& in = b.in;
  const auto& tg = b.tg;
  FloatBuffer& p = b.p;
  FloatBuffer grad(P);
  b.gradient(grad);

  // Central differences of the double-precision reference loss.
  std::vector<double> pd(p.data(), p.data() + P);
  const double h = 1e-5;
  double max_abs_grad = 0;
  for (size_t i = 0; i < P; ++i) max_abs_grad = std::max(max_abs_grad, (double)std::abs(grad[i]));
  const double tol = 2e-5 * max_abs_grad;  // float backward vs double numerics (seen: 1e-7); an index bug is O(max_abs_grad)
  double worst = 0;
  size_t worst_i = 0;
  int nonzero = 0;
  for (size_t i = 0; i < P; ++i) {
    const double keep = pd[i];
    pd[i] = keep + h;
    const double lp = test::ref_gpt_loss(cfg, pd, in.data(), tg.data(), N, t);
    pd[i] = keep - h;
    const double lm = test::ref_gpt_loss(cfg, pd, in.data(), tg.data(), N, t);
    pd[i] = keep;
    const double num = (lp - lm) / (2 * h);
    const double err = std::abs(num - grad[i]);
    if (err > worst) worst = err, worst_i = i;
    if (std::abs(num) > 1e-3 * max_abs_grad) ++nonzero;
  }
  std::string worst_name;
  for (const auto& s : param_specs(cfg))
    if (worst_i >= s.offset && worst_i < s.offset + s.numel) worst_name = s.name;
  CAPTURE(worst_name);
  CAPTURE(worst_i);
  CAPTURE(max_abs_grad);
  CHECK(worst <= tol);
  CHECK(max_abs_grad > 1e-2);
  CHECK(nonzero > (int)(0.9 * P));  // the check exercised nearly every parameter
}

TEST_CASE("model: backward with accumulate = false writes every gradient: equal to += into zeros, bit for bit") {
  TinyBatch b(3, 21);
  const size_t P = b.P;
  FloatBuffer acc(P), over(P);
  b.gradient(acc);
  for (size_t i = 0; i < P; ++i) over[i] = std::nanf("");  // garbage that must not survive
  b.gradient(over, /*accumulate=*/false);
  size_t differ = 0, nonzero = 0;
  for (size_t i = 0; i < P; ++i) {
    differ += std::memcmp(&acc[i], &over[i], sizeof(float)) != 0;
    nonzero += acc[i] != 0.f;
  }
  CHECK(differ == 0);
  CHECK(nonzero > P / 2);
}

TEST_CASE("model: loss at initialisation is within 0.1 of ln(vocab)") {
  Config cfg;  // baby shape
  FloatBuffer p(num_params(cfg));
  init_params(cfg, p.data(), 1337);
  const int N = 4, t = cfg.block_size;
  std::vector<int32_t> in(N * t), tg(N * t);
  in = test::random_tokens(in.size(), cfg.vocab_size, 5);
  tg = test::random_tokens(tg.size(), cfg.vocab_size, 6);
  Activations acts(cfg, N);
  const double loss = gpt_forward(test::openblas_backend(), cfg, param_views(cfg, p.data()), acts, in.data(), tg.data(), N, t) / (N * t);
  CAPTURE(loss);
  CHECK(std::abs(loss - std::log(65.0)) < 0.1);
}

TEST_CASE("model: a tiny batch is overfit to loss < 0.1") {
  Config cfg;
  cfg.vocab_size = 10;
  cfg.block_size = 16;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 32;
  // A split of block_size+2 tokens holds exactly two distinct windows.
  std::vector<int32_t> split(cfg.block_size + 2);
  split = test::random_tokens(split.size(), cfg.vocab_size, 9);
  Engine e(cfg, {.batch_size = 4, .shard_size = 1, .threads = 2, .seed = 1337});
  init_params(cfg, e.params(), 1337);
  e.weights_loaded();
  AdamW opt;
  opt.weight_decay = 0;
  double loss = 0;
  for (int i = 0; i < 300; ++i) loss = e.train_step(split, 3e-3f, 1.0f, opt);
  CAPTURE(loss);
  CHECK(loss < 0.1);
}

TEST_CASE("model: FLOPs per token count the matmuls and attention") {
  Config cfg;
  // 6·(12·L·C² + V·C) + 12·L·C·T
  CHECK(flops_per_token(cfg) == 6.0 * (12.0 * 4 * 128 * 128 + 65 * 128) + 12.0 * 4 * 128 * 64);
}
