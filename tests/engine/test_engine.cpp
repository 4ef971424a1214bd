// The backend seam and the engine's phases: the fp32 backend is the reference
// ops bit for bit, the phases over any split of their ranges are one step,
// every product goes through the backend, and the weight hook covers every
// parameter exactly once per optimizer step.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/engine.h"
#include "ops/ops.h"
#include "base/rng.h"
#include "support.h"

using namespace chargpt;
using chargpt::test::randn;

namespace {

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

// Forwards to the OpenBLAS backend and records what the engine asks of it.
struct RecordingBackend final : Backend {
  Backend& inner = cpu_backend();
  const float* bound = nullptr;
  size_t n = 0;
  std::vector<int> covered;  // per float: how many times weights_changed covered it
  size_t forwards = 0, backwards = 0;
  std::string name() const override { return "recording"; }
  void bind_weights(const float* params, size_t count) override {
    bound = params;
    n = count;
    covered.assign(count, 0);
  }
  void weights_changed(size_t begin, size_t end) override {
    for (size_t i = begin; i < end; ++i) __atomic_fetch_add(&covered[i], 1, __ATOMIC_RELAXED);
  }
  void linear_forward(float* out, const float* inp, const float* w, const float* b, int R, int IC, int OC) override {
    CHECK((w >= bound && w < bound + n));  // weights always point into the bound block
    __atomic_fetch_add(&forwards, 1, __ATOMIC_RELAXED);
    inner.linear_forward(out, inp, w, b, R, IC, OC);
  }
  void linear_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp, const float* w, int R,
                       int IC, int OC, bool acc) override {
    CHECK((w >= bound && w < bound + n));
    __atomic_fetch_add(&backwards, 1, __ATOMIC_RELAXED);
    inner.linear_backward(dinp, dw, db, dout, inp, w, R, IC, OC, acc);
  }
  void matvec_forward(float* out, const float* w, const float* b, const float* x, int IC, int r0, int r1) override {
    inner.matvec_forward(out, w, b, x, IC, r0, r1);
  }
  void gemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float beta,
            float* C, int ldc) override {
    inner.gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
  }
};

}  // namespace

TEST_CASE("backend: the OpenBLAS fp32 backend is matmul_forward/backward and matvec_rows, bit for bit") {
  Backend& be = cpu_backend();
  CHECK(be.name() == "openblas fp32");
  Rng rng(11);
  const int R = 13, IC = 20, OC = 37;
  const auto inp = randn(rng, (size_t)R * IC), w = randn(rng, (size_t)OC * IC, 0.3), b = randn(rng, OC);
  const auto dout = randn(rng, (size_t)R * OC);
  std::vector<float> out1((size_t)R * OC), out2(out1.size());
  be.linear_forward(out1.data(), inp.data(), w.data(), b.data(), R, IC, OC);
  matmul_forward(out2.data(), inp.data(), w.data(), b.data(), R, IC, OC);
  CHECK(same_bits(out1.data(), out2.data(), out1.size()));
  for (bool acc : {false, true}) {
    std::vector<float> di1((size_t)R * IC), dw1((size_t)OC * IC, 0.5f), db1(OC, 0.25f);
    std::vector<float> di2 = di1, dw2 = dw1, db2 = db1;
    be.linear_backward(di1.data(), dw1.data(), db1.data(), dout.data(), inp.data(), w.data(), R, IC, OC, acc);
    matmul_backward(di2.data(), dw2.data(), db2.data(), dout.data(), inp.data(), w.data(), R, IC, OC, acc);
    CHECK(same_bits(di1.data(), di2.data(), di1.size()));
    CHECK(same_bits(dw1.data(), dw2.data(), dw1.size()));
    CHECK(same_bits(db1.data(), db2.data(), db1.size()));
  }
  std::vector<float> mv1(OC), mv2(OC);
  be.matvec_forward(mv1.data(), w.data(), b.data(), inp.data(), IC, 0, OC);
  matvec_rows(mv2.data(), w.data(), b.data(), inp.data(), IC, 0, OC);
  CHECK(same_bits(mv1.data(), mv2.data(), OC));
  // gemm: C = A·B (row-major) against a hand loop on small integers (exact in fp32).
  const float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, -1, 2, 3, 1};  // A[2,3], B[3,2]
  float C[4] = {100, 100, 100, 100};
  be.gemm(false, false, 2, 2, 3, A, 3, B, 2, 0.f, C, 2);
  CHECK(C[0] == 1 * 1 + 2 * -1 + 3 * 3);
  CHECK(C[1] == 1 * 0 + 2 * 2 + 3 * 1);
  CHECK(C[2] == 4 * 1 + 5 * -1 + 6 * 3);
  CHECK(C[3] == 4 * 0 + 5 * 2 + 6 * 1);
}

TEST_CASE("backend: names parse, and an unusable choice is one clear error") {
  CHECK(parse_backend("openblas") == BackendKind::openblas);
  CHECK(parse_backend("onednn") == BackendKind::onednn);
  CHECK(parse_backend("cuda") == BackendKind::cuda);
  CHECK(parse_precision("bf16") == Precision::bf16);
  CHECK_THROWS_WITH_AS(parse_backend("mkl"), "backend 'mkl' is not one of: openblas, onednn, cuda",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_precision("fp16"), "precision 'fp16' is not one of: fp32, bf16", std::invalid_argument);
  CHECK_THROWS_WITH_AS(make_backend({BackendKind::openblas, Precision::bf16, false}),
                       "--precision bf16 needs --backend onednn (OpenBLAS runs fp32 only)", std::runtime_error);
  CHECK(backend_info().find("backends: openblas") != std::string::npos);
}

TEST_CASE("engine: the phases over split ranges are one train_step, bit for bit") {
  const Config cfg = test::tiny_config(11);
  const auto split = test::random_tokens(500, cfg.vocab_size, 3);
  AdamW opt;
  Engine whole(cfg, 7, 2, 2, 99), parts(cfg, 7, 2, 1, 99);
  REQUIRE(whole.n_shards() == 4);
  init_params(cfg, whole.params(), 5);
  init_params(cfg, parts.params(), 5);
  const size_t K = parts.n_chunks(), P = parts.num_params();
  REQUIRE(K >= 3);
  const float clip = 0.05f;
  for (int step = 0; step < 3; ++step) {
    double norm = 0;
    const double loss = whole.train_step(split, 1e-2f, clip, opt, &norm);
    parts.sample_next_batch(split);
    parts.forward_backward(3, 4);  // any order, any split
    parts.forward_backward(0, 3);
    parts.reduce(K / 2, K);
    parts.reduce(0, K / 2);
    CHECK(parts.batch_loss() == loss);
    CHECK(std::sqrt(parts.grad_norm_sq()) == norm);
    const float scale = clip_scale(loss, norm, clip, step + 1);
    parts.update(0, 1, 1e-2f, scale, opt);
    parts.update(1, K, 1e-2f, scale, opt);
    parts.finish_step();
    CHECK(parts.step() == whole.step());
    CHECK(same_bits(parts.params(), whole.params(), P));
    CHECK(same_bits(parts.adam_m(), whole.adam_m(), P));
    CHECK(same_bits(parts.adam_v(), whole.adam_v(), P));
  }
  // The reduced gradient has its own buffer: the shards' buffers are left as backward wrote them,
  // and the reduced one is their sum in shard order.
  std::vector<float> sum(P);
  for (size_t i = 0; i < P; ++i)
    sum[i] = ((parts.shard_grad(0)[i] + parts.shard_grad(1)[i]) + parts.shard_grad(2)[i]) + parts.shard_grad(3)[i];
  CHECK(parts.grad() != parts.shard_grad(0));
  CHECK(same_bits(sum.data(), parts.grad(), P));
}

TEST_CASE("engine: every product goes through the backend and the weight hook covers each weight once a step") {
  const Config cfg = test::tiny_config(11);
  const auto split = test::random_tokens(500, cfg.vocab_size, 3);
  auto rec = std::make_unique<RecordingBackend>();
  RecordingBackend& r = *rec;
  Engine e(cfg, 5, 2, 2, 7, std::move(rec));
  REQUIRE(r.bound == e.params());
  REQUIRE(r.n == e.num_params());
  init_params(cfg, e.params(), 7);
  e.weights_loaded();
  AdamW opt;
  const int steps = 3;
  for (int s = 0; s < steps; ++s) e.train_step(split, 1e-3f, 1.f, opt);
  int lo = 1 << 30, hi = 0;
  for (int c : r.covered) lo = std::min(lo, c), hi = std::max(hi, c);
  CHECK(lo == steps + 1);  // weights_loaded once, then once per step
  CHECK(hi == steps + 1);
  // Per shard: 4 products a layer plus the LM head, forward and backward.
  const size_t per_shard = 4 * cfg.n_layer + 1;
  CHECK(r.forwards == per_shard * e.n_shards() * steps);
  CHECK(r.backwards == per_shard * e.n_shards() * steps);
  // And the result is the default engine's, bit for bit.
  Engine ref(cfg, 5, 2, 1, 7);
  init_params(cfg, ref.params(), 7);
  ref.weights_loaded();
  for (int s = 0; s < steps; ++s) ref.train_step(split, 1e-3f, 1.f, opt);
  CHECK(same_bits(ref.params(), e.params(), e.num_params()));
}

TEST_CASE("engine: clip_scale clips over the threshold in float and names the step of a non-finite loss or norm") {
  CHECK(clip_scale(2.0, 0.5, 1.f, 1) == 1.f);
  CHECK(clip_scale(2.0, 4.0, 1.f, 1) == 0.25f);
  CHECK(clip_scale(2.0, 4.0, 0.f, 1) == 1.f);  // 0 turns clipping off
  // The float threshold, widened, is what divides: not the decimal 0.05.
  const double norm = 0.65559521647551733;
  CHECK(clip_scale(2.0, norm, 0.05f, 1) == (float)((double)0.05f / norm));
  CHECK_THROWS_WITH_AS(clip_scale(NAN, 1.0, 1.f, 7), "non-finite loss at step 7 (loss nan, gradient norm 1.000000)",
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(clip_scale(1.0, INFINITY, 1.f, 3), "non-finite gradient norm at step 3 (loss 1.000000, gradient norm inf)",
                       std::runtime_error);
}
