// The backend choice and the engine's phases: names parse and a bad choice is one
// clear error, the phases over any split of their ranges are one step, every
// product goes through the backend naming a tensor of the bound table, and the
// weight hook covers every parameter exactly once per optimizer step. (The
// products themselves: tests/backend/test_conformance.cpp.)
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/recording_backend.h"
#include "engine/engine.h"
#include "ops/ops.h"
#include "base/rng.h"
#include "support.h"

using namespace chargpt;

namespace {

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

}  // namespace

TEST_CASE("backend: names parse, and an unusable choice is one clear error") {
  CHECK(parse_backend("openblas") == BackendKind::openblas);
  CHECK(parse_backend("onednn") == BackendKind::onednn);
  CHECK(parse_backend("cuda") == BackendKind::cuda);
  CHECK(parse_precision("bf16") == Precision::bf16);
  CHECK_THROWS_WITH_AS(parse_backend("mkl"), "backend 'mkl' is not one of: openblas, onednn, cuda",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_precision("fp16"), "precision 'fp16' is not one of: fp32, bf16", std::invalid_argument);
  const std::string bf16_on_openblas = backend_options_error({BackendKind::openblas, Precision::bf16, false});
  CHECK(bf16_on_openblas.rfind("--precision bf16 is not offered by --backend openblas (with bf16: ", 0) == 0);
  CHECK_THROWS_WITH_AS(make_backend({BackendKind::openblas, Precision::bf16, false}), bf16_on_openblas.c_str(),
                       std::runtime_error);
  CHECK(backend_options_error({BackendKind::openblas, Precision::fp32, true}).rfind(
            "--tf32 does not apply to --backend openblas", 0) == 0);
  CHECK(backend_options_error({}).empty());
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
  auto rec = std::make_unique<test::RecordingBackend>();
  test::RecordingBackend& r = *rec;
  Engine e(cfg, 5, 2, 2, 7, std::move(rec));
  REQUIRE(r.table.block == e.params());
  REQUIRE(r.table.floats == e.num_params());
  REQUIRE(r.table.tensors.size() == param_specs(cfg).size());
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
