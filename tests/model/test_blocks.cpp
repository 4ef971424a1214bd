// The shard's work split over threads in fixed blocks (model/blocks.h): gpt_forward and
// gpt_backward give the same bits on any number of threads, and the split products'
// results agree with the whole products' and with the double reference.
#include <doctest/doctest.h>

#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "base/rng.h"
#include "base/threads.h"
#include "model/blocks.h"
#include "model/model.h"
#include "ref_model.h"
#include "support.h"

using namespace chargpt;

namespace {

using VF = std::vector<float>;

bool same_bits(const VF& a, const VF& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Forwards every call, but has the model call each product whole (as for a GPU).
struct WholeProducts final : Backend {
  Backend& inner;
  explicit WholeProducts(Backend& be) : inner(be) {}
  std::string name() const override { return "whole " + inner.name(); }
  bool splits_products() const override { return false; }
  bool wants_bf16_inputs() const override { return inner.wants_bf16_inputs(); }
  void bind_weights(const WeightTable& t) override { inner.bind_weights(t); }
  void weights_changed(size_t b, size_t e) override { inner.weights_changed(b, e); }
  void linear_forward(float* out, LinearInput inp, Weight w, Weight b, int R, int IC, int OC) override {
    inner.linear_forward(out, inp, w, b, R, IC, OC);
  }
  void linear_backward(float* dinp, float* dw, float* db, const float* dout, LinearInput inp, Weight w, int R, int IC,
                       int OC, bool acc) override {
    inner.linear_backward(dinp, dw, db, dout, inp, w, R, IC, OC, acc);
  }
  void matvec_forward(float* out, Weight w, Weight b, const float* x, int IC, int r0, int r1) override {
    inner.matvec_forward(out, w, b, x, IC, r0, r1);
  }
};

// One forward and backward (gradients written, accumulate = false) of N random sequences.
struct Pass {
  double loss = 0;
  VF losses, grad, d_encoded;
};
struct Batch {
  Config cfg;
  int N, t;
  VF p;
  std::vector<int32_t> in, tg;
  Batch(const Config& c, int n, uint64_t seed)
      : cfg(c), N(n), t(c.block_size), p(test::random_params(c, seed, 0.3)),
        in(test::random_tokens((size_t)n * t, c.vocab_size, seed + 1)),
        tg(test::random_tokens((size_t)n * t, c.vocab_size, seed + 2)) {}
  Pass run(Backend& be) const {
    Activations acts(cfg, N);
    const ConstParamViews P = param_views(cfg, (const float*)p.data());
    Pass r;
    r.grad.assign(p.size(), std::numeric_limits<float>::quiet_NaN());  // every gradient must be written
    r.loss = gpt_forward(be, cfg, P, acts, in.data(), tg.data(), N, t);
    r.losses.assign(acts.losses, acts.losses + (size_t)N * t);
    gpt_backward(be, cfg, P, param_views(cfg, r.grad.data()), acts, in.data(), tg.data(), N, t, 1.f / (N * t),
                 false);
    r.d_encoded.assign(acts.d_res, acts.d_res + (size_t)N * t * cfg.n_embd);
    return r;
  }
};

// The CPU backends this build offers (OpenBLAS always), bound to the batch's weights.
std::vector<std::unique_ptr<Backend>> cpu_backends(const Batch& b) {
  std::vector<std::unique_ptr<Backend>> v;
  for (BackendKind k : {BackendKind::openblas, BackendKind::onednn}) {
    try {
      v.push_back(make_backend({.kind = k}));
    } catch (const std::runtime_error& e) {
      MESSAGE("not tested here: " << e.what());
      continue;
    }
    v.back()->bind_weights(weight_table(b.cfg, b.p.data()));
    v.back()->weights_changed(0, b.p.size());
  }
  return v;
}

// Worst |got - want| over the largest |want|, per tensor of the layout.
double worst_rel(const Config& cfg, const VF& got, const VF& want, std::string& where) {
  double w = 0;
  for (const ParamSpec& s : param_specs(cfg)) {
    double scale = 0, err = 0;
    for (size_t i = s.offset; i < s.offset + s.numel; ++i) {
      scale = std::max(scale, (double)std::fabs(want[i]));
      err = std::max(err, (double)std::fabs(got[i] - want[i]));
    }
    const double rel = err / std::max(scale, 1e-30);
    if (!(rel <= w)) w = rel, where = s.name;
  }
  return w;
}

}  // namespace

TEST_CASE("model: a dimension splits into n / 128 blocks, at most 4, in multiples of 16, covering it once") {
  struct Want {
    int n, count, size;
  };
  for (Want w : {Want{1, 1, 16}, Want{65, 1, 80}, Want{255, 1, 256}, Want{256, 2, 128}, Want{300, 2, 160},
                 Want{384, 3, 128}, Want{1024, 4, 256}, Want{1152, 4, 288}, Want{1536, 4, 384}}) {
    CAPTURE(w.n);
    const par::Blocks b(w.n);
    CHECK(b.count == w.count);
    CHECK(b.size == w.size);
  }
  for (int n = 1; n <= 5000; n += 7) {
    CAPTURE(n);
    const par::Blocks b(n);
    REQUIRE(b.count >= 1);
    CHECK(b.count <= par::kMaxBlocks);
    CHECK(b.begin(0) == 0);
    CHECK(b.end(b.count - 1) == n);
    for (int k = 0; k < b.count; ++k) CHECK(b.end(k) > b.begin(k));
    for (int k = 0; k + 1 < b.count; ++k) CHECK(b.end(k) == b.begin(k + 1));
  }
}

TEST_CASE("model: gpt_forward and gpt_backward give the same bits on 1, 2, 3, 8, 16 and 64 threads") {
  // Several blocks per op: 264 rows in 2 blocks (792 in 4), qkv's 288 features in 2, c_fc's
  // 384 in 3, the LM head's 260 in 2, 3 heads a sequence; N = 1 is a single-sequence shard.
  static_assert(par::kMinBlock == 128 && par::kMaxBlocks == 4, "the shapes below are chosen for these blocks");
  const Config cfg{.vocab_size = 260, .block_size = 264, .n_layer = 2, .n_head = 3, .n_embd = 96};
  allow_parallelism(64);
  for (int N : {1, 3}) {
    CAPTURE(N);
    const Batch b(cfg, N, 40 + N);
    for (const auto& be : cpu_backends(b)) {
      CAPTURE(be->name());
      Pass ref;
      for (int threads : {1, 2, 3, 8, 16, 64}) {
        CAPTURE(threads);
        tbb::task_arena arena(threads);
        Pass got;
        arena.execute([&] { got = b.run(*be); });
        if (threads == 1) {
          ref = got;
          CHECK(std::isfinite(ref.loss));
          CHECK(std::none_of(ref.grad.begin(), ref.grad.end(), [](float g) { return std::isnan(g); }));
          continue;
        }
        CHECK(std::memcmp(&got.loss, &ref.loss, sizeof(double)) == 0);
        CHECK(same_bits(got.losses, ref.losses));
        CHECK(same_bits(got.grad, ref.grad));
        CHECK(same_bits(got.d_encoded, ref.d_encoded));
      }
    }
  }
}

TEST_CASE("model: split products agree with whole products and with the double reference's derivatives") {
  // 300 rows in 2 blocks (the second sequence crosses the cut), qkv's 288 features in 2,
  // c_fc's 384 in 3, the LM head's 260 in 2.
  const Config cfg{.vocab_size = 260, .block_size = 100, .n_layer = 1, .n_head = 2, .n_embd = 96};
  const Batch b(cfg, 3, 60);
  Backend& be = test::openblas_backend();
  WholeProducts whole(be);
  tbb::task_arena arena(2);
  Pass split, one;
  arena.execute([&] { split = b.run(be); });
  one = b.run(whole);
  CHECK(std::abs(split.loss - one.loss) <= 1e-6 * std::abs(one.loss));
  std::string where;
  const double rel = worst_rel(cfg, split.grad, one.grad, where);
  CAPTURE(where);
  CHECK(rel <= 1e-5);  // at most float rounding in another order (seen: 0, OpenBLAS); a wrong block is O(1)

  // Central differences of the double reference along one random direction u per tensor:
  // (L(p + h u) - L(p - h u)) / 2h against the split gradient's g·u, relative to |g|·|u| over
  // the tensor (|u| = 1). A block written to the wrong place moves g·u by O(|g|·|u|).
  std::vector<double> pd(b.p.begin(), b.p.end());
  const double h = 1e-4;
  Rng rng(61);
  double worst = 0;
  std::string worst_name;
  for (const ParamSpec& s : param_specs(cfg)) {
    std::vector<double> u(s.numel);
    double norm = 0, gnorm = 0, gu = 0;
    for (double& x : u) x = rng.normal(), norm += x * x;
    norm = std::sqrt(norm);
    for (size_t i = 0; i < s.numel; ++i) {
      u[i] /= norm;
      const double g = split.grad[s.offset + i];
      gnorm += g * g;
      gu += g * u[i];
    }
    auto loss_at = [&](double step) {
      std::vector<double> q = pd;
      for (size_t i = 0; i < s.numel; ++i) q[s.offset + i] += step * u[i];
      return test::ref_gpt_loss(cfg, q, b.in.data(), b.tg.data(), b.N, b.t);
    };
    const double num = (loss_at(h) - loss_at(-h)) / (2 * h);
    const double rel = std::abs(num - gu) / std::max(std::sqrt(gnorm), 1e-12);
    CAPTURE(s.name);
    CHECK(gnorm > 1e-8);
    if (rel > worst) worst = rel, worst_name = s.name;
  }
  CAPTURE(worst_name);
  CHECK(worst <= 1e-5);  // float backward vs double numerics (seen 8e-7)
}
