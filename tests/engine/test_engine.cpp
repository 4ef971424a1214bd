// The backend choice and the engine's step: names parse and a bad choice is one
// clear error, the step over any number of ranks and threads is the same step,
// a divergence stops every rank alike, every product goes through the backend
// naming a tensor of the bound table, and the weight hook covers every parameter
// exactly once per optimizer step. (The products themselves:
// tests/backend/test_conformance.cpp.)
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "backend/recording_backend.h"
#include "engine/collective.h"
#include "engine/engine.h"
#include "engine/evaluate.h"
#include "ops/ops.h"
#include "base/rng.h"
#include "engine/thread_collective.h"
#include "support.h"

using namespace chargpt;
using chargpt::test::ThreadCollective;
using chargpt::test::ThreadGroup;

namespace {

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

}  // namespace

TEST_CASE("backend: names parse, and an unusable choice is one clear error") {
  CHECK(parse_backend("openblas") == BackendKind::openblas);
  CHECK(parse_backend("onednn") == BackendKind::onednn);
  CHECK(parse_backend("cuda") == BackendKind::cuda);
  CHECK(parse_precision("bf16") == Precision::bf16);
  CHECK_THROWS_WITH_AS(parse_backend("mkl"), "backend 'mkl' is not one of: auto, openblas, onednn, cuda",
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

namespace {

// What one rank of a run saw: per step the loss and norm, the weights, its
// AdamW moments after the gather, a loss estimate and an exact evaluation.
struct RankRun {
  std::vector<double> losses, norms;
  std::vector<float> params, m, v;
  double estimate = 0, eval = 0;
  std::string error;
  bool agreed_failure = false;  // the error was marked as raised by every rank
};

// The engine's plan of a run_ranks run: 4 shards of 2 sequences (the last of 1).
struct Plan {
  int pass_size = 0;  // 0 = default (the shard: the tiny model's 8-token rows)
  int in_flight = 0;  // 0 = min(threads, shards per rank)
};

// `steps` steps with clipping on (so the gathered norm matters) of a tiny model
// on R ranks, each with `threads` threads.
std::vector<RankRun> run_ranks(int R, int threads, int steps, bool poison = false, float lr = 1e-2f,
                               Plan plan = {}) {
  const Config cfg = test::tiny_config(11);
  const auto split = test::random_tokens(500, cfg.vocab_size, 3);
  ThreadGroup group(R);
  std::vector<RankRun> runs(R);
  std::vector<std::thread> ranks;
  for (int r = 0; r < R; ++r)
    ranks.emplace_back([&, r] {
      ThreadCollective comm(group, r);
      RankRun& out = runs[r];
      try {
        Engine e(cfg,
                 {.batch_size = 7, .shard_size = 2, .pass_size = plan.pass_size, .threads = threads,
                  .in_flight = plan.in_flight, .seed = 99},
                 BackendOptions{}, comm);
        if (e.n_shards() != 4) throw std::logic_error("expected 4 shards");
        init_params(cfg, e.params(), 5);
        if (poison) e.params()[3] = NAN;
        e.weights_loaded();
        AdamW opt;
        for (int s = 0; s < steps; ++s) {
          double norm = 0;
          out.losses.push_back(e.train_step(split, lr, 0.05f, opt, &norm));
          out.norms.push_back(norm);
        }
        e.gather_optimizer_state();
        out.params.assign(e.params(), e.params() + e.num_params());
        out.m.assign(e.adam_m(), e.adam_m() + e.num_params());
        out.v.assign(e.adam_v(), e.adam_v() + e.num_params());
        out.estimate = e.estimate_loss(split, 3, 17);
        out.eval = evaluate_split(e.backend(), cfg, e.params(), split, threads, 3, comm).loss;
      } catch (const std::exception& ex) {
        out.error = ex.what();
      }
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < R; ++r) runs[r].agreed_failure = group.agreed[r];
  return runs;
}

}  // namespace

// Every rank's run is the reference's, bit for bit.
void check_same_as(const std::vector<RankRun>& runs, const RankRun& ref) {
  for (size_t r = 0; r < runs.size(); ++r) {
    CAPTURE(r);
    const RankRun& x = runs[r];
    REQUIRE(x.error == "");
    CHECK_FALSE(x.agreed_failure);
    CHECK(x.losses == ref.losses);  // every rank: the same loss and norm bits
    CHECK(x.norms == ref.norms);
    CHECK(same_bits(x.params.data(), ref.params.data(), x.params.size()));
    CHECK(x.estimate == ref.estimate);
    CHECK(x.eval == ref.eval);
  }
  CHECK(same_bits(runs[0].m.data(), ref.m.data(), ref.m.size()));  // gathered on rank 0
  CHECK(same_bits(runs[0].v.data(), ref.v.data(), ref.v.size()));
}

TEST_CASE("engine: 3 steps on 1 to 3 and 5 or 6 ranks (threads as ranks: more ranks than the 4 shards) and 1 to 8 "
          "threads and 1 to 4 shards in flight give the same bits") {
  for (int pass : {0, 1}) {  // one pass a shard, and 2 passes a shard (the last shard: 1)
    CAPTURE(pass);
    const std::vector<RankRun> ref = run_ranks(1, 1, 3, false, 1e-2f, {.pass_size = pass});
    REQUIRE(ref[0].error == "");
    REQUIRE(ref[0].losses.size() == 3);
    CHECK(ref[0].norms[0] > 0.05);  // clipping is on
    CHECK(std::isfinite(ref[0].estimate));
    CHECK(std::isfinite(ref[0].eval));
    for (int R : {1, 2, 3, 5, 6})
      for (int threads : {1, 2, 3, 8}) {  // 8: oversubscribed on small machines
        if (R == 1 && threads == 1) continue;
        if (R > 3 && threads > 2) continue;  // the rank threads alone oversubscribe
        CAPTURE(R);
        CAPTURE(threads);
        check_same_as(run_ranks(R, threads, 3, false, 1e-2f, {.pass_size = pass}), ref[0]);
      }
    for (int in_flight : {1, 2, 4})  // whatever the threads: buffers in flight change no bits
      for (int R : {1, 2}) {
        CAPTURE(in_flight);
        CAPTURE(R);
        check_same_as(run_ranks(R, 3, 3, false, 1e-2f, {.pass_size = pass, .in_flight = in_flight}), ref[0]);
      }
  }
}

TEST_CASE("engine: a shard in passes is the same gradient summed in another order and its loss is the same to rounding") {
  const std::vector<RankRun> whole = run_ranks(1, 2, 1), passes = run_ranks(1, 2, 1, false, 1e-2f, {.pass_size = 1});
  REQUIRE(whole[0].error == "");
  REQUIRE(passes[0].error == "");
  CHECK(passes[0].losses[0] == doctest::Approx(whole[0].losses[0]).epsilon(1e-6));
  CHECK(passes[0].norms[0] == doctest::Approx(whole[0].norms[0]).epsilon(1e-4));
  double worst = 0;
  for (size_t i = 0; i < whole[0].params.size(); ++i)
    worst = std::max(worst, (double)std::fabs(whole[0].params[i] - passes[0].params[i]));
  CHECK(worst < 1e-5);
}

TEST_CASE("engine: the engine bytes do not grow with the shard count and --pass-size over the shard is refused") {
  const Config cfg = test::tiny_config(11);
  size_t bytes = 0;
  for (int shard : {8, 4, 2, 1}) {  // 1, 2, 4 and 8 shards of 8 sequences, 1-sequence passes, 2 in flight
    CAPTURE(shard);
    Engine e(cfg, {.batch_size = 8, .shard_size = shard, .pass_size = 1, .threads = 2, .in_flight = 2});
    CHECK(e.in_flight() == std::min(2, e.n_shards()));
    if (e.n_shards() >= 4) {
      if (bytes == 0) bytes = e.bytes_allocated();
      CHECK(e.bytes_allocated() == bytes);
    }
  }
  // Every shard in one round (2 shards, 2 in flight): shard 0 is written into the gradient itself,
  // one buffer fewer, and the same bits as the folded copy.
  Engine two(cfg, {.batch_size = 8, .shard_size = 4, .pass_size = 1, .threads = 2, .in_flight = 2});
  CHECK(two.bytes_allocated() == bytes - sizeof(float) * two.num_params());
  CHECK_THROWS_WITH_AS(Engine(cfg, {.batch_size = 8, .shard_size = 2, .pass_size = 3}),
                       "--pass-size 3 exceeds the shard size 2 (--shard-size): a pass is part of one shard",
                       std::runtime_error);
}

TEST_CASE("engine: a non-finite loss stops every rank at the same step with the same error, as an agreed failure") {
  for (int R : {1, 3}) {
    CAPTURE(R);
    const std::vector<RankRun> runs = run_ranks(R, 1, 2, /*poison=*/true);
    for (const RankRun& x : runs) {
      CHECK(x.losses.empty());
      CHECK(x.error.starts_with("non-finite loss at step 1 (loss nan"));
      CHECK(x.agreed_failure);
    }
  }
}

TEST_CASE("engine: weights that overflow in the update stop every rank at that step, as an agreed failure") {
  for (int R : {1, 3}) {
    CAPTURE(R);
    const std::vector<RankRun> runs = run_ranks(R, 2, 2, /*poison=*/false, /*lr=*/1e38f);
    for (const RankRun& x : runs) {
      CHECK(x.losses.empty());  // the step that diverged returns no loss
      CHECK(x.error.starts_with("non-finite weights after the update of step 1 (in '"));
      CHECK(x.error.ends_with("'): the run diverged"));
      CHECK(x.agreed_failure);
    }
  }
}

TEST_CASE("engine: every product goes through the backend and the weight hook covers each weight once a step") {
  const Config cfg = test::tiny_config(11);
  const auto split = test::random_tokens(500, cfg.vocab_size, 3);
  auto rec = std::make_unique<test::RecordingBackend>();
  test::RecordingBackend& r = *rec;
  Engine e(cfg, {.batch_size = 5, .shard_size = 2, .threads = 2, .seed = 7}, std::move(rec));
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
  Engine ref(cfg, {.batch_size = 5, .shard_size = 2, .threads = 1, .seed = 7});
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
