// The CUDA backend. Without a GPU this file still verifies the
// row-major → column-major cuBLAS mapping (fed to a column-major CPU sgemm on the
// model's shapes), the staging layout, the weight-upload schedule, and the
// whole device backend (backend_device.cpp: staging, grow-only buffers, bias and
// bias-gradient products, accumulate, lazy weight uploads) against an emulated
// device that does the column-major products with OpenBLAS, inside the real
// Engine. The tests that need a GPU are skipped without one (CHARGPT_SKIP);
// "cuda: asking for the backend without a device" checks how the query failed.
#include <doctest/doctest.h>

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <tbb/parallel_for.h>

#include "backend/backend.h"
#include "backend/cuda_mapping.h"
#include "backend/device_backend.h"
#include "engine/engine.h"
#include "model/model.h"
#include "base/rng.h"
#include "support.h"

using namespace chargpt;
using chargpt::test::random_tokens;
using chargpt::test::random_vec;

namespace {

// max |a - b| over max |b|: the relative error in the max norm.
double rel_err(const float* a, const float* b, size_t n) {
  double d = 0, s = 0;
  for (size_t i = 0; i < n; ++i) {
    d = std::max(d, std::fabs((double)a[i] - b[i]));
    s = std::max(s, std::fabs((double)b[i]));
  }
  return s > 0 ? d / s : d;
}

// The reference: the row-major product on OpenBLAS.
void row_major_ref(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                   float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.f, A, lda,
              B, ldb, beta, C, ldc);
}

// What cuBLAS would compute from the mapped arguments: a column-major sgemm.
void col_major_mapped(const CublasGemmArgs& g, float alpha, const float* A, const float* B, float beta, float* C) {
  cblas_sgemm(CblasColMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans, g.m, g.n,
              g.k, alpha, A, g.lda, B, g.ldb, beta, C, g.ldc);
}

size_t span(int rows, int cols, int ld) { return rows == 0 || cols == 0 ? 0 : (size_t)(rows - 1) * ld + cols; }

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

// ---------------------------------------------------------------- emulated device

// What the emulated device saw. Device and pinned memory are plain host arrays
// filled with NaN, so a product that reads memory nobody wrote shows up.
struct DeviceLog {
  std::mutex mu;
  std::vector<std::pair<const float*, size_t>> uploads;  // host source, floats
  std::atomic<long> device_allocs{0}, pinned_allocs{0}, live{0}, lanes{0}, syncs{0}, gemms{0}, exact_gemms{0};
  size_t uploads_from(const float* block, size_t n, size_t* floats = nullptr) {
    std::lock_guard<std::mutex> g(mu);
    size_t c = 0, f = 0;
    for (const auto& [p, len] : uploads)
      if (p >= block && p < block + n) ++c, f += len;
    if (floats) *floats = f;
    return c;
  }
};

float* nan_array(size_t n) {
  float* p = new float[n];
  std::fill(p, p + n, std::numeric_limits<float>::quiet_NaN());
  return p;
}

class HostLane final : public DeviceLane {
 public:
  explicit HostLane(DeviceLog& log) : log_(log) { ++log_.lanes; }
  float* alloc_device(size_t n) override { return ++log_.device_allocs, ++log_.live, nan_array(n); }
  void free_device(float* p) noexcept override {
    if (p) --log_.live, delete[] p;
  }
  float* alloc_pinned(size_t n) override { return ++log_.pinned_allocs, ++log_.live, nan_array(n); }
  void free_pinned(float* p) noexcept override {
    if (p) --log_.live, delete[] p;
  }
  void upload(float* dev, const float* host, size_t n) override {
    std::memcpy(dev, host, sizeof(float) * n);
    std::lock_guard<std::mutex> g(log_.mu);
    log_.uploads.emplace_back(host, n);
  }
  void download(float* host, const float* dev, size_t n) override { std::memcpy(host, dev, sizeof(float) * n); }
  void sgemm(const CublasGemmArgs& g, float alpha, const float* A, const float* B, float beta, float* C,
             bool allow_tf32) override {
    ++log_.gemms;
    if (!allow_tf32) ++log_.exact_gemms;
    col_major_mapped(g, alpha, A, B, beta, C);
  }
  void sync() override { ++log_.syncs; }

 private:
  DeviceLog& log_;
};

class HostDevice final : public Device {
 public:
  explicit HostDevice(DeviceLog& log) : log_(log) {}
  std::string name() const override { return "emulated device"; }
  std::unique_ptr<DeviceLane> make_lane() override { return std::make_unique<HostLane>(log_); }
  float* alloc_device(size_t n) override { return ++log_.device_allocs, ++log_.live, nan_array(n); }
  void free_device(float* p) noexcept override {
    if (p) --log_.live, delete[] p;
  }

 private:
  DeviceLog& log_;
};

std::unique_ptr<Backend> emulated_backend(DeviceLog& log) {
  return make_device_backend(std::make_unique<HostDevice>(log));
}

// ---------------------------------------------------------------- the real device

// A CUDA backend, or null with the case marked skipped. Why it failed is checked by
// "cuda: asking for the backend without a device is one line saying so".
std::unique_ptr<Backend> cuda_or_skip(bool tf32 = false) {
  BackendOptions o;
  o.kind = BackendKind::cuda;
  o.tf32 = tf32;
  try {
    return make_backend(o);
  } catch (const std::runtime_error& e) {
    test::mark_skipped(e.what());
    return nullptr;
  }
}

Config small_config() { return {.vocab_size = 65, .block_size = 32, .n_layer = 2, .n_head = 2, .n_embd = 48}; }

// The losses of `steps` optimizer steps of an engine (init_params with seed 7).
std::vector<double> train_losses(Engine& e, int steps, const std::vector<int32_t>& split) {
  init_params(e.cfg(), e.params(), 7);
  e.weights_loaded();
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) losses.push_back(e.train_step(split, 1e-3f, 1.f, AdamW{}));
  return losses;
}

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
    Engine e(cfg, 6, 2, threads, 11, emulated_backend(log));  // 3 shards
    init_params(cfg, e.params(), 7);
    e.weights_loaded();  // after bind_weights: still one upload, not two
    CHECK(e.backend().weight_syncs() == 0);  // lazy: nothing before the first product
    CHECK(log.uploads_from(e.params(), e.num_params()) == 0);
    for (int s = 1; s <= steps; ++s) {
      e.train_step(split, 1e-3f, 1.f, AdamW{});
      // The step's products used the weights uploaded before it (the first step:
      // the initial ones); its own update is uploaded before the next product.
      CHECK(e.backend().weight_syncs() == (size_t)s);
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
    CHECK(e.backend().weight_syncs() == (size_t)steps + 1);
    e.estimate_loss(split, 2, 99);
    CHECK(e.backend().weight_syncs() == (size_t)steps + 1);
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
  // Two threads: every lane's first shard allocates what the single lane did (all
  // shards have the same shape), nothing after; plus the one weights buffer.
  const AllocCount two = engine_schedule(2, 5);
  CHECK(two.after_last == 1 + two.lanes * (one.after_first - 1));
}

// ================================================================ the device backend, emulated

TEST_CASE("cuda backend on an emulated device: linear products equal the CPU's") {
  DeviceLog log;
  auto be = emulated_backend(log);
  Backend& cpu = cpu_backend();
  const int shapes[][3] = {{37, 50, 30}, {128, 128, 384}, {1, 31, 65}, {33, 96, 1}, {5, 1, 7}};
  // One block holding the weights and biases of every shape, bound once.
  size_t total = 0;
  for (const auto& s : shapes) total += (size_t)s[1] * s[2] + s[2];
  const auto params = random_vec(total, 1);
  be->bind_weights(params.data(), params.size());
  size_t off = 0;
  uint64_t seed = 10;
  for (const auto& s : shapes) {
    const int R = s[0], IC = s[1], OC = s[2];
    CAPTURE(R);
    CAPTURE(IC);
    CAPTURE(OC);
    const float* W = params.data() + off;
    const float* b = W + (size_t)OC * IC;
    off += (size_t)OC * IC + OC;
    const auto inp = random_vec((size_t)R * IC, seed++);
    const auto dout = random_vec((size_t)R * OC, seed++);
    for (bool bias : {false, true}) {
      std::vector<float> out_d((size_t)R * OC), out_c(out_d.size());
      be->linear_forward(out_d.data(), inp.data(), W, bias ? b : nullptr, R, IC, OC);
      cpu.linear_forward(out_c.data(), inp.data(), W, bias ? b : nullptr, R, IC, OC);
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
                              dout.data(), inp.data(), W, R, IC, OC, accumulate);
          cpu.linear_backward(want_dinp ? di_c.data() : nullptr, dw_c.data(), want_dbias ? db_c.data() : nullptr,
                              dout.data(), inp.data(), W, R, IC, OC, accumulate);
          CHECK(rel_err(dw_d.data(), dw_c.data(), dw_c.size()) < 1e-6);
          CHECK(rel_err(db_d.data(), db_c.data(), db_c.size()) < 1e-5);  // a sum of R terms in another order
          CHECK(rel_err(di_d.data(), di_c.data(), di_c.size()) < 1e-6);
        }
  }
  // The bias broadcasts and bias gradients ran exactly (never TF32); the rest may.
  CHECK(log.exact_gemms > 0);
  CHECK(log.exact_gemms < log.gemms);
  CHECK(be->weight_syncs() == 1u);  // bound once, uploaded once
}

TEST_CASE("cuda backend on an emulated device: gemm on host arrays with transposes and strides") {
  DeviceLog log;
  auto be = emulated_backend(log);
  int n = 0;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (float beta : {0.f, 1.f}) {
        const int M = 37, N = 50, K = 30, lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 1, ldc = N + 3;
        const auto A = random_vec(ta ? span(K, M, lda) : span(M, K, lda), 3 + n);
        const auto B = random_vec(tb ? span(N, K, ldb) : span(K, N, ldb), 4 + n);
        auto C_d = random_vec(span(M, N, ldc), 5 + n++), C_c = C_d;
        be->gemm(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, beta, C_d.data(), ldc);
        row_major_ref(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, beta, C_c.data(), ldc);
        CHECK(rel_err(C_d.data(), C_c.data(), C_c.size()) < 1e-6);  // the gaps between rows included
      }
  CHECK(n == 8);
}

TEST_CASE("cuda backend on an emulated device: a weight outside the bound block is an error") {
  DeviceLog log;
  auto be = emulated_backend(log);
  std::vector<float> params(100, 0.5f), other(100, 0.5f), x(10, 1.f), out(10);
  CHECK_THROWS_WITH_AS(be->linear_forward(out.data(), x.data(), params.data(), nullptr, 1, 10, 10),
                       doctest::Contains("outside the bound parameter block"), std::logic_error);
  be->bind_weights(params.data(), params.size());
  CHECK_NOTHROW(be->linear_forward(out.data(), x.data(), params.data(), nullptr, 1, 10, 10));
  CHECK(out[3] == doctest::Approx(5.f));
  CHECK_THROWS_AS(be->linear_forward(out.data(), x.data(), other.data(), nullptr, 1, 10, 10), std::logic_error);
  CHECK_THROWS_AS(be->linear_forward(out.data(), x.data(), params.data() + 1, nullptr, 1, 10, 10), std::logic_error);
  CHECK_THROWS_AS(be->weights_changed(0, 101), std::out_of_range);
}

TEST_CASE("cuda backend on an emulated device: 10 training steps match the CPU to 1e-4 relative") {
  DeviceLog log;
  const Config cfg = small_config();
  const auto split = random_tokens(4000, cfg.vocab_size, 3);
  Engine cpu(cfg, 6, 2, 2, 11);
  Engine dev(cfg, 6, 2, 2, 11, emulated_backend(log));
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

// ================================================================ without a device

TEST_CASE("cuda: asking for the backend without a device is one line saying so") {
  BackendOptions o;
  o.kind = BackendKind::cuda;
  std::string msg;
  try {
    auto be = make_backend(o);
    MESSAGE("a CUDA device is present: " << be->name());
    CHECK(be->name().find("cuda") != std::string::npos);
    return;
  } catch (const std::runtime_error& e) {
    msg = e.what();
  }
  CHECK(msg.find('\n') == std::string::npos);
#ifdef CHARGPT_HAVE_CUDA
  CHECK(msg.rfind("no CUDA device: ", 0) == 0);
  CHECK(msg.find("(--backend cuda needs an NVIDIA GPU and driver)") != std::string::npos);
  CHECK(msg.size() > std::string("no CUDA device:  (--backend cuda needs an NVIDIA GPU and driver)").size());
#else
  CHECK(msg.find("this build has no CUDA") != std::string::npos);
#endif
}

TEST_CASE("cuda: bf16 is refused by the cuda backend naming the flag") {
  BackendOptions o;
  o.kind = BackendKind::cuda;
  o.precision = Precision::bf16;
#ifdef CHARGPT_HAVE_CUDA
  CHECK_THROWS_WITH_AS(make_backend(o), doctest::Contains("--precision bf16"), std::runtime_error);
#else
  CHECK_THROWS_WITH_AS(make_backend(o), doctest::Contains("this build has no CUDA"), std::runtime_error);
#endif
}

TEST_CASE("cuda: backend_info reports the CUDA build and the devices") {
  const std::string info = backend_info();
#ifdef CHARGPT_HAVE_CUDA
  CHECK(info.find("backends: openblas") != std::string::npos);
  CHECK(info.find(", cuda") != std::string::npos);
  CHECK(info.find("cuda: compiled in (runtime ") != std::string::npos);
  CHECK(info.find(", cuBLAS ") != std::string::npos);
  CHECK(info.find("; devices: ") != std::string::npos);
#else
  CHECK(info.find("cuda: not compiled in") != std::string::npos);
#endif
  MESSAGE(info);
}

// ================================================================ on a GPU (skipped without one)

TEST_CASE("cuda gpu: linear products and gemm match the CPU on random shapes to 1e-5 relative") {
  auto be = cuda_or_skip();
  if (!be) return;
  // fp32 cuBLAS vs OpenBLAS differ only in the order of the K-term sums:
  // relative error in the max norm below 1e-5 for K up to a few thousand.
  Backend& cpu = cpu_backend();
  const int shapes[][3] = {{37, 50, 30}, {1024, 384, 1152}, {1024, 1536, 384}, {128, 128, 65}, {1, 33, 31}, {97, 1, 5}};
  size_t total = 0;
  for (const auto& s : shapes) total += (size_t)s[1] * s[2] + s[2];
  const auto params = random_vec(total, 1);
  be->bind_weights(params.data(), params.size());
  size_t off = 0;
  uint64_t seed = 40;
  for (const auto& s : shapes) {
    const int R = s[0], IC = s[1], OC = s[2];
    CAPTURE(R);
    CAPTURE(IC);
    CAPTURE(OC);
    const float* W = params.data() + off;
    const float* b = W + (size_t)OC * IC;
    off += (size_t)OC * IC + OC;
    const auto inp = random_vec((size_t)R * IC, seed++);
    const auto dout = random_vec((size_t)R * OC, seed++);
    std::vector<float> out_g((size_t)R * OC), out_c(out_g.size());
    be->linear_forward(out_g.data(), inp.data(), W, b, R, IC, OC);
    cpu.linear_forward(out_c.data(), inp.data(), W, b, R, IC, OC);
    CHECK(rel_err(out_g.data(), out_c.data(), out_c.size()) < 1e-5);
    for (bool accumulate : {false, true}) {
      auto dw_g = random_vec((size_t)OC * IC, seed), dw_c = dw_g;
      auto db_g = random_vec(OC, seed + 1), db_c = db_g;
      std::vector<float> di_g((size_t)R * IC), di_c(di_g.size());
      be->linear_backward(di_g.data(), dw_g.data(), db_g.data(), dout.data(), inp.data(), W, R, IC, OC, accumulate);
      cpu.linear_backward(di_c.data(), dw_c.data(), db_c.data(), dout.data(), inp.data(), W, R, IC, OC, accumulate);
      CHECK(rel_err(di_g.data(), di_c.data(), di_c.size()) < 1e-5);
      CHECK(rel_err(dw_g.data(), dw_c.data(), dw_c.size()) < 1e-5);
      CHECK(rel_err(db_g.data(), db_c.data(), db_c.size()) < 1e-5);
    }
  }
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int M = 67, N = 45, K = 129, lda = (ta ? M : K) + 1, ldb = (tb ? K : N) + 2, ldc = N + 5;
      const auto A = random_vec(ta ? span(K, M, lda) : span(M, K, lda), seed++);
      const auto B = random_vec(tb ? span(N, K, ldb) : span(K, N, ldb), seed++);
      auto C_g = random_vec(span(M, N, ldc), seed++), C_c = C_g;
      be->gemm(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, 1.f, C_g.data(), ldc);
      row_major_ref(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, 1.f, C_c.data(), ldc);
      CHECK(rel_err(C_g.data(), C_c.data(), C_c.size()) < 1e-5);
    }
}

TEST_CASE("cuda gpu: with TF32 allowed products stay within 1e-2 relative") {
  auto be = cuda_or_skip(/*tf32=*/true);
  if (!be) return;
  // TF32 keeps 10 mantissa bits of each input (relative rounding 2^-11 ≈ 5e-4).
  const int M = 256, N = 384, K = 512;
  const auto A = random_vec((size_t)M * K, 1), B = random_vec((size_t)K * N, 2);
  std::vector<float> C_g((size_t)M * N), C_c(C_g.size());
  be->gemm(false, false, M, N, K, A.data(), K, B.data(), N, 0.f, C_g.data(), N);
  row_major_ref(false, false, M, N, K, A.data(), K, B.data(), N, 0.f, C_c.data(), N);
  CHECK(rel_err(C_g.data(), C_c.data(), C_c.size()) < 1e-2);
}

TEST_CASE("cuda gpu: 10 training steps match the CPU to 1e-4 relative") {
  BackendOptions o;
  o.kind = BackendKind::cuda;
  {
    auto probe = cuda_or_skip();
    if (!probe) return;
  }
  const Config cfg = small_config();
  const auto split = random_tokens(4000, cfg.vocab_size, 3);
  Engine cpu(cfg, 6, 2, 2, 11);
  Engine gpu(cfg, 6, 2, 2, 11, o);
  const auto lc = train_losses(cpu, 10, split);
  const auto lg = train_losses(gpu, 10, split);
  for (int s = 0; s < 10; ++s) {
    CAPTURE(s);
    CHECK(std::fabs(lg[s] - lc[s]) <= 1e-4 * std::fabs(lc[s]));
  }
  CHECK(gpu.backend().weight_syncs() == 10u);
}
