// The CUDA backend without a GPU: the row-major → column-major
// cuBLAS mapping (fed to a column-major CPU sgemm on the model's shapes), the
// staging layout, the weight-upload schedule, and the whole device backend
// (backend_device.cpp) against an emulated device inside the real Engine
// (cuda_test_util.h). The switches, the input cache, bf16 and the error paths:
// test_backend_cuda_tuning.cpp; the cases that need a GPU: test_backend_cuda_gpu.cpp.
#include <doctest/doctest.h>

#include <tbb/parallel_for.h>

#include "cuda_test_util.h"
#include "recording_backend.h"

using namespace chargpt;
using namespace chargpt::cuda_test;

namespace {

// Checks one row-major product through the mapping; returns the relative error.
double mapped_vs_row_major(bool ta, bool tb, int M, int N, int K, int pad, float beta, uint64_t seed) {
  const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  const auto A = random_vec(ta ? span(K, M, lda) : span(M, K, lda), seed);
  const auto B = random_vec(tb ? span(N, K, ldb) : span(K, N, ldb), seed + 1);
  auto C_ref = random_vec(span(M, N, ldc), seed + 2);
  auto C_map = C_ref;
  row_major_ref(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, beta, C_ref.data(), ldc);
  const CublasGemmArgs g = map_row_major(ta, tb, M, N, K, lda, ldb, ldc);
  const auto [a, b] = g.operands(A.data(), B.data());
  col_major_mapped(g, 1.f, a, b, beta, C_map.data());
  return rel_err(C_map.data(), C_ref.data(), C_ref.size());
}

struct Shape {
  const char* name;
  int R, C, V;
};
// Rows per shard (default_shard_size × block_size), width, vocabulary.
const Shape kModelShapes[] = {{"baby", 2 * 64, 128, 65}, {"nanogpt", 4 * 256, 384, 65}};

}  // namespace

// ================================================================ the mapping

TEST_CASE("cuda mapping: operands swap and transposes and sizes follow C^T = op(B)^T op(A)^T") {
  const CublasGemmArgs g = map_row_major(true, false, 10, 20, 30, 11, 21, 22);
  CHECK(g.swap_operands);
  CHECK(g.trans_a == false);  // cuBLAS's A is our B, not transposed
  CHECK(g.trans_b == true);   // cuBLAS's B is our A, transposed
  CHECK(g.m == 20);
  CHECK(g.n == 10);
  CHECK(g.k == 30);
  CHECK(g.lda == 21);
  CHECK(g.ldb == 11);
  CHECK(g.ldc == 22);
  int a = 1, b = 2;
  CHECK(g.operands(&a, &b).first == &b);
  CHECK(g.operands(&a, &b).second == &a);
}

TEST_CASE("cuda mapping: every product of the linear layers of the baby and nanogpt shapes equals the row-major one") {
  for (const Shape& s : kModelShapes) {
    const int C = s.C, R = s.R;
    // (IC, OC) of qkv, the attention projection, the MLP's two layers, the tied LM head.
    const int layers[][2] = {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}, {C, s.V}};
    for (const auto& l : layers) {
      const int IC = l[0], OC = l[1];
      const std::string preset = s.name;
      CAPTURE(preset);
      CAPTURE(IC);
      CAPTURE(OC);
      uint64_t seed = 100 + IC * 7 + OC;
      CHECK(mapped_vs_row_major(false, true, R, OC, IC, 0, 0.f, seed) < 1e-6);   // out = inp·Wᵀ
      CHECK(mapped_vs_row_major(false, true, R, OC, IC, 0, 1.f, seed) < 1e-6);   // ... onto the broadcast bias
      CHECK(mapped_vs_row_major(false, false, R, IC, OC, 0, 0.f, seed) < 1e-6);  // dinp = dout·W
      CHECK(mapped_vs_row_major(true, false, OC, IC, R, 0, 0.f, seed) < 1e-6);   // dweight = doutᵀ·inp
      CHECK(mapped_vs_row_major(false, false, R, OC, 1, 0, 0.f, seed) < 1e-6);  // bias broadcast: ones·bias
      CHECK(mapped_vs_row_major(false, false, 1, OC, R, 0, 0.f, seed) < 1e-6);  // dbias = onesᵀ·dout
    }
  }
}

TEST_CASE("cuda mapping: odd shapes, all four transposes, padded strides and beta") {
  const int shapes[][3] = {{37, 50, 30}, {1, 1, 1}, {33, 1, 65}, {1, 31, 97}, {64, 96, 1}, {129, 7, 255}};
  int n = 0;
  for (const auto& s : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int pad : {0, 3})
          for (float beta : {0.f, 1.f, 0.5f}) {
            CAPTURE(s[0]);
            CAPTURE(s[1]);
            CAPTURE(s[2]);
            CAPTURE(ta);
            CAPTURE(tb);
            CAPTURE(pad);
            CAPTURE(beta);
            CHECK(mapped_vs_row_major(ta, tb, s[0], s[1], s[2], pad, beta, 7 + n++) < 1e-6);
          }
  CHECK(n == 6 * 2 * 2 * 2 * 3);
}

TEST_CASE("cuda mapping: strides too small for a row are rejected naming the stride") {
  CHECK_THROWS_WITH_AS(map_row_major(false, false, 4, 5, 6, 5, 5, 5), doctest::Contains("lda=5"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(map_row_major(false, true, 4, 5, 6, 6, 5, 5), doctest::Contains("ldb=5"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(map_row_major(true, false, 4, 5, 6, 4, 5, 4), doctest::Contains("ldc=4"),
                       std::invalid_argument);
  CHECK_THROWS_AS(map_row_major(false, false, -1, 5, 6, 6, 5, 5), std::invalid_argument);
  CHECK_NOTHROW(map_row_major(true, true, 4, 5, 6, 4, 6, 5));
}

// ================================================================ staging

TEST_CASE("cuda staging: sizes and offsets of each product") {
  SUBCASE("forward") {
    const StagingPlan p = StagingPlan::forward(128, 128, 384, true);
    CHECK(p.in_floats == 128u * 128);
    CHECK(p.out_floats == 128u * 384);
    CHECK(p.ones == 128u);
    CHECK(StagingPlan::forward(37, 50, 30, false).ones == 0u);
  }
  SUBCASE("backward, the baby model's qkv") {
    const StagingPlan p = StagingPlan::backward(128, 128, 384, true, true);
    CHECK(p.dout == 0u);
    CHECK(p.inp == 49152u);  // 128·384, already a multiple of 64
    CHECK(p.in_floats == 49152u + 16384);
    CHECK(p.dinp == 0u);
    CHECK(p.dweight == 16384u);
    CHECK(p.dbias == 65536u);
    CHECK(p.out_floats == 65536u + 384);
    CHECK(p.ones == 128u);
  }
  SUBCASE("backward, odd shape: pieces aligned to 64 floats") {
    const StagingPlan p = StagingPlan::backward(37, 50, 30, true, true);
    CHECK(p.inp == 1152u);  // 37·30 = 1110 rounded up
    CHECK(p.in_floats == 1152u + 1850);
    CHECK(p.dweight == 1856u);  // 37·50 = 1850 rounded up
    CHECK(p.dbias == 3392u);    // 1856 + 1500 = 3356 rounded up
    CHECK(p.out_floats == 3392u + 30);
  }
  SUBCASE("backward without dinp and dbias (the LM head's dweight only)") {
    const StagingPlan p = StagingPlan::backward(37, 50, 30, false, false);
    CHECK(p.dweight == 0u);
    CHECK(p.out_floats == 1500u);
    CHECK(p.ones == 0u);
  }
}

TEST_CASE("cuda staging: the pieces of a backward call never overlap and stay aligned") {
  int checked = 0;
  for (int R : {1, 5, 37, 128, 1024})
    for (int IC : {1, 30, 50, 128, 1536})
      for (int OC : {1, 30, 65, 384})
        for (int flags = 0; flags < 4; ++flags) {
          const bool dinp = flags & 1, dbias = flags & 2;
          const StagingPlan p = StagingPlan::backward(R, IC, OC, dinp, dbias);
          // in: dout [0, R·OC), inp [p.inp, p.inp + R·IC)
          CHECK(p.inp >= (size_t)R * OC);
          CHECK(p.in_floats == p.inp + (size_t)R * IC);
          // out: dinp, dweight, dbias in that order
          std::vector<std::pair<size_t, size_t>> pieces;
          if (dinp) pieces.push_back({p.dinp, (size_t)R * IC});
          pieces.push_back({p.dweight, (size_t)OC * IC});
          if (dbias) pieces.push_back({p.dbias, (size_t)OC});
          for (size_t i = 0; i < pieces.size(); ++i) {
            CHECK(pieces[i].first % StagingPlan::kAlign == 0);
            if (i) CHECK(pieces[i].first >= pieces[i - 1].first + pieces[i - 1].second);
          }
          CHECK(p.out_floats == pieces.back().first + pieces.back().second);
          CHECK(p.out_floats < p.in_floats + (size_t)OC * IC + 3 * StagingPlan::kAlign + OC + (size_t)R * IC);
          ++checked;
        }
  CHECK(checked == 5 * 5 * 4 * 4);
}

// ================================================================ upload schedule

TEST_CASE("cuda upload schedule: chunks marked from many threads upload as one copy") {
  WeightUploads u;
  CHECK_FALSE(u.pending());
  u.bind(100000);
  CHECK(u.pending());  // a new block is uploaded before the first product
  auto r = u.begin_flush();
  REQUIRE(r.size() == 1);
  CHECK(r[0] == std::pair<size_t, size_t>{0, 100000});
  CHECK(u.pending());  // until the copy is done
  u.end_flush(r);
  CHECK_FALSE(u.pending());
  CHECK(u.full_uploads() == 1);

  // The AdamW chunk loop: disjoint chunks from several threads, in any order.
  const size_t chunk = 16384, n_chunks = (100000 + chunk - 1) / chunk;
  tbb::parallel_for(size_t(0), n_chunks, [&](size_t c) { u.mark(c * chunk, std::min<size_t>(100000, (c + 1) * chunk)); });
  CHECK(u.pending());
  r = u.begin_flush();
  REQUIRE(r.size() == 1);  // merged into one contiguous copy
  CHECK(r[0] == std::pair<size_t, size_t>{0, 100000});
  u.end_flush(r);
  CHECK(u.flushes() == 2);
  CHECK(u.full_uploads() == 2);
  CHECK(u.copies() == 2);
  CHECK(u.floats_uploaded() == 200000u);

  // Part of the block: separate ranges stay separate, overlapping and adjacent ones merge.
  u.mark(10, 20);
  u.mark(500, 600);
  u.mark(15, 30);
  u.mark(30, 40);
  r = u.begin_flush();
  REQUIRE(r.size() == 2);
  CHECK(r[0] == std::pair<size_t, size_t>{10, 40});
  CHECK(r[1] == std::pair<size_t, size_t>{500, 600});
  u.mark(0, 1);  // marked while the copy runs: still pending after it
  u.end_flush(r);
  CHECK(u.pending());
  CHECK(u.full_uploads() == 2);  // a partial upload is not a full one
  CHECK(u.flushes() == 3);
  r = u.begin_flush();
  u.end_flush(r);
  CHECK_FALSE(u.pending());
  // Nothing marked: nothing uploaded, no flush counted.
  r = u.begin_flush();
  CHECK(r.empty());
  u.end_flush(r);
  CHECK(u.flushes() == 4);

  CHECK_THROWS_WITH_AS(u.mark(99999, 100001), doctest::Contains("outside the bound block of 100000 floats"),
                       std::out_of_range);
}

// The allocations of a `threads`-thread engine over `steps` steps: {after step 1, after the last, lanes}.
struct AllocCount {
  long after_first, after_last, lanes;
};

AllocCount engine_schedule(int threads, int steps) {
  DeviceLog log;
  const Config cfg = small_config();
  const auto split = random_tokens(4000, cfg.vocab_size, 3);
  AllocCount a{};
  {
    Engine e(cfg, {.batch_size = 6, .shard_size = 2, .threads = threads, .seed = 11}, emulated_backend(log));  // 3 shards
    init_params(cfg, e.params(), 7);
    e.weights_loaded();  // after bind_weights: still one upload, not two
    CHECK(log.uploads_from(e.params(), e.num_params()) == 0);  // lazy: nothing before the first product
    for (int s = 1; s <= steps; ++s) {
      e.train_step(split, 1e-3f, 1.f, AdamW{});
      // The step's products used the weights uploaded before it (the first step:
      // the initial ones); its own update is uploaded before the next product.
      size_t floats = 0;
      CHECK(log.uploads_from(e.params(), e.num_params(), &floats) == (size_t)s);  // one copy per step
      CHECK(floats == (size_t)s * e.num_params());                                 // of the whole block
      if (s == 1) a.after_first = log.device_allocs + log.pinned_allocs;
    }
    a.after_last = log.device_allocs + log.pinned_allocs;
    a.lanes = log.lanes;
    CHECK(log.lanes >= 1);
    CHECK(log.lanes <= threads);  // one per worker thread that ran a shard
    // An evaluation reads the weights of the last step: one more upload, then none.
    e.estimate_loss(split, 2, 99);
    CHECK(log.uploads_from(e.params(), e.num_params()) == (size_t)steps + 1);
    e.estimate_loss(split, 2, 99);
    CHECK(log.uploads_from(e.params(), e.num_params()) == (size_t)steps + 1);
  }
  CHECK(log.live == 0);  // every device and pinned buffer freed with the backend
  return a;
}

TEST_CASE("cuda upload schedule: the Engine uploads the weights once per optimizer step through the hook") {
  // One thread: one lane, whose staging buffers grow during the first step and never after.
  const AllocCount one = engine_schedule(1, 5);
  CHECK(one.lanes == 1);
  CHECK(one.after_first > 1);
  CHECK(one.after_last == one.after_first);
  // Two threads: two shards in flight, each with its own activations (a slot),
  // and a lane's input cache is keyed by the activations' address: a lane that
  // ran both slots caches both, so at most twice what the single lane allocated
  // (all shards have the same shape); plus the one weights buffer.
  const AllocCount two = engine_schedule(2, 5);
  CHECK(two.after_last >= 1 + two.lanes * (one.after_first - 1));
  CHECK(two.after_last <= 1 + two.lanes * 2 * (one.after_first - 1));
}

// ================================================================ the device backend, emulated

TEST_CASE("cuda backend on an emulated device: linear products equal the CPU's") {
  DeviceLog log;
  auto be = emulated_backend(log);
  Backend& cpu = test::openblas_backend();
  const int shapes[][3] = {{37, 50, 30}, {128, 128, 384}, {1, 31, 65}, {33, 96, 1}, {5, 1, 7}};
  WeightTable table = product_table(shapes);  // tensors 2i, 2i + 1: shape i's weight and bias
  const auto params = random_vec(table.floats, 1);
  table.block = params.data();
  be->bind_weights(table);
  uint64_t seed = 10;
  int t = 0;
  for (const auto& s : shapes) {
    const int R = s[0], IC = s[1], OC = s[2];
    CAPTURE(R);
    CAPTURE(IC);
    CAPTURE(OC);
    const Weight W{params.data() + table.tensors[t].offset, t}, b{params.data() + table.tensors[t + 1].offset, t + 1};
    t += 2;
    const auto inp = random_vec((size_t)R * IC, seed++);
    const auto dout = random_vec((size_t)R * OC, seed++);
    for (bool bias : {false, true}) {
      std::vector<float> out_d((size_t)R * OC), out_c(out_d.size());
      be->linear_forward(out_d.data(), {inp.data()}, W, bias ? b : Weight{}, R, IC, OC);
      cpu.linear_forward(out_c.data(), {inp.data()}, W, bias ? b : Weight{}, R, IC, OC);
      CHECK(rel_err(out_d.data(), out_c.data(), out_c.size()) < 1e-6);
    }
    for (bool accumulate : {false, true})
      for (bool want_dinp : {false, true})
        for (bool want_dbias : {false, true}) {
          CAPTURE(accumulate);
          CAPTURE(want_dinp);
          CAPTURE(want_dbias);
          // Accumulating onto existing gradients; writing over garbage.
          auto dw_d = random_vec((size_t)OC * IC, seed), dw_c = dw_d;
          auto db_d = random_vec(OC, seed + 1), db_c = db_d;
          std::vector<float> di_d((size_t)R * IC, -7.f), di_c(di_d.size(), -7.f);
          be->linear_backward(want_dinp ? di_d.data() : nullptr, dw_d.data(), want_dbias ? db_d.data() : nullptr,
                              dout.data(), {inp.data()}, W, R, IC, OC, accumulate);
          cpu.linear_backward(want_dinp ? di_c.data() : nullptr, dw_c.data(), want_dbias ? db_c.data() : nullptr,
                              dout.data(), {inp.data()}, W, R, IC, OC, accumulate);
          CHECK(rel_err(dw_d.data(), dw_c.data(), dw_c.size()) < 1e-6);
          CHECK(rel_err(db_d.data(), db_c.data(), db_c.size()) < 1e-5);  // a sum of R terms in another order
          CHECK(rel_err(di_d.data(), di_c.data(), di_c.size()) < 1e-6);
        }
  }
  // The bias broadcasts and bias gradients ran exactly (never TF32); the rest may.
  CHECK(log.exact_gemms > 0);
  CHECK(log.exact_gemms < log.gemms);
  CHECK(log.uploads_from(params.data(), params.size()) == 1u);  // bound once, uploaded once
}

TEST_CASE("cuda backend on an emulated device: a weight that is not the named tensor of the bound table is an error") {
  DeviceLog log;
  auto be = emulated_backend(log);
  std::vector<float> params(100, 0.5f), other(100, 0.5f), x(10, 1.f), out(10);
  CHECK_THROWS_WITH_AS(be->linear_forward(out.data(), {x.data()}, {params.data(), 0}, {}, 1, 10, 10),
                       doctest::Contains("used before bind_weights"), std::logic_error);
  be->bind_weights({params.data(), params.size(), {{0, 100}}});
  CHECK_NOTHROW(be->linear_forward(out.data(), {x.data()}, {params.data(), 0}, {}, 1, 10, 10));
  CHECK(out[3] == doctest::Approx(5.f));
  CHECK_THROWS_AS(be->linear_forward(out.data(), {x.data()}, {other.data(), 0}, {}, 1, 10, 10), std::logic_error);
  CHECK_THROWS_AS(be->linear_forward(out.data(), {x.data()}, {params.data() + 1, 0}, {}, 1, 10, 10),
                  std::logic_error);
  CHECK_THROWS_AS(be->linear_forward(out.data(), {x.data()}, {params.data(), 1}, {}, 1, 10, 10), std::logic_error);
  CHECK_THROWS_AS(be->weights_changed(0, 101), std::out_of_range);
}

TEST_CASE("cuda backend on an emulated device: 10 training steps match the CPU to 1e-4 relative") {
  DeviceLog log;
  const Config cfg = small_config();
  const auto split = random_tokens(4000, cfg.vocab_size, 3);
  Engine cpu(cfg, {.batch_size = 6, .shard_size = 2, .threads = 2, .seed = 11});
  Engine dev(cfg, {.batch_size = 6, .shard_size = 2, .threads = 2, .seed = 11}, emulated_backend(log));
  const auto lc = train_losses(cpu, 10, split);
  const auto ld = train_losses(dev, 10, split);
  REQUIRE(lc.size() == 10u);
  for (int s = 0; s < 10; ++s) {
    CAPTURE(s);
    CHECK(std::fabs(ld[s] - lc[s]) <= 1e-4 * std::fabs(lc[s]));
  }
  CHECK(lc.back() < lc.front());  // it trained
  CHECK(rel_err(dev.params(), cpu.params(), cpu.num_params()) < 1e-3);
}

