// The CUDA backend on a real GPU, and its answers without one. A case that
// needs a GPU is marked skipped (tests/support.h: CTest counts it as skipped) at its start.
#include <doctest/doctest.h>

#include <cstdlib>
#include <initializer_list>
#include <utility>

#include "cuda_test_util.h"
#include "recording_backend.h"

using namespace chargpt;
using namespace chargpt::cuda_test;

namespace {

// Sets CHARGPT_CUDA_* for the lifetime of the object (the backend reads them when it is made).
struct EnvFor {
  std::vector<std::string> names;
  explicit EnvFor(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const auto& [k, v] : vars) setenv(k, v, 1), names.emplace_back(k);
  }
  ~EnvFor() {
    for (const auto& k : names) unsetenv(k.c_str());
  }
};

// A CUDA backend, or null with the case marked skipped (CHARGPT_SKIP's convention: no
// assertion before it). Why it failed is checked by "cuda: asking for the backend without
// a device is one line saying so".
std::unique_ptr<Backend> cuda_or_skip(bool tf32 = false, Precision precision = Precision::fp32) {
  BackendOptions o;
  o.kind = BackendKind::cuda;
  o.tf32 = tf32;
  o.precision = precision;
  try {
    return make_backend(o);
  } catch (const std::runtime_error& e) {
    test::mark_skipped(std::string("no CUDA device: ") + e.what());
    return nullptr;
  }
}

BackendOptions cuda_options(Precision p = Precision::fp32) {
  BackendOptions o;
  o.kind = BackendKind::cuda;
  o.precision = p;
  return o;
}

// Linear products (forward, backward with and without accumulate) of the GPU
// backend against the CPU on the given inputs (bf16: the CPU gets the same
// bf16-rounded operands, whose products are exact in fp32; the tolerance allows
// for the tensor cores' fp32 accumulation, which need not round to nearest,
// and is still 40x below one bf16 rounding); the worst relative error.
double linear_vs_cpu(Backend& be, bool bf16) {
  const double tol = bf16 ? 1e-4 : 1e-5;
  Backend& cpu = test::openblas_backend();
  const int shapes[][3] = {{37, 50, 30}, {1024, 384, 1152}, {1024, 1536, 384}, {128, 128, 65}, {1, 33, 31}, {97, 1, 5}};
  WeightTable table = product_table(shapes);  // tensors 2i, 2i + 1: shape i's weight and bias
  const auto params = random_vec(table.floats, 1);
  const auto params_r = bf16 ? bf16_round(params.data(), params.size()) : params;
  table.block = params.data();
  be.bind_weights(table);
  int t = 0;
  uint64_t seed = 40;
  double worst = 0;
  for (const auto& s : shapes) {
    const int R = s[0], IC = s[1], OC = s[2];
    CAPTURE(R);
    CAPTURE(IC);
    CAPTURE(OC);
    const size_t off = table.tensors[t].offset;
    const Weight W{params.data() + off, t}, b{params.data() + table.tensors[t + 1].offset, t + 1};  // bias: fp32
    const Weight Wr{params_r.data() + off};  // the CPU reads it from the host
    t += 2;
    const auto inp = random_vec((size_t)R * IC, seed++);
    const auto dout = random_vec((size_t)R * OC, seed++);
    const auto inp_r = bf16 ? bf16_round(inp.data(), inp.size()) : inp;
    const auto dout_r = bf16 ? bf16_round(dout.data(), dout.size()) : dout;
    std::vector<float> out_g((size_t)R * OC), out_c(out_g.size());
    be.linear_forward(out_g.data(), {inp.data()}, W, b, R, IC, OC);
    cpu.linear_forward(out_c.data(), {inp_r.data()}, Wr, b, R, IC, OC);
    const double e_out = rel_err(out_g.data(), out_c.data(), out_c.size());
    CHECK(e_out < tol);
    worst = std::max(worst, e_out);
    for (bool accumulate : {false, true}) {
      auto dw_g = random_vec((size_t)OC * IC, seed), dw_c = dw_g;
      auto db_g = random_vec(OC, seed + 1), db_c = db_g;
      std::vector<float> di_g((size_t)R * IC), di_c(di_g.size());
      be.linear_backward(di_g.data(), dw_g.data(), db_g.data(), dout.data(), {inp.data()}, W, R, IC, OC, accumulate);
      cpu.linear_backward(di_c.data(), dw_c.data(), nullptr, dout_r.data(), {inp_r.data()}, Wr, R, IC, OC, accumulate);
      cpu.linear_backward(nullptr, std::vector<float>((size_t)OC * IC).data(), db_c.data(), dout.data(), {inp.data()}, W,
                          R, IC, OC, accumulate);  // the bias gradient from the fp32 dout
      const double e[] = {rel_err(di_g.data(), di_c.data(), di_c.size()), rel_err(dw_g.data(), dw_c.data(), dw_c.size()),
                          rel_err(db_g.data(), db_c.data(), db_c.size())};
      for (double x : e) {
        CHECK(x < tol);
        worst = std::max(worst, x);
      }
    }
  }
  return worst;
}

}  // namespace

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
  // The runtime's own text for a missing driver ("CUDA driver version is insufficient") misleads.
  CHECK(msg.find("insufficient") == std::string::npos);
#else
  CHECK(msg.find("this build has no cuda") != std::string::npos);
#endif
}

TEST_CASE("cuda: --tf32 with bf16 products is refused naming both flags") {
  BackendOptions o = cuda_options(Precision::bf16);
  o.tf32 = true;
  // A usage error whatever the build (backend_options_error).
  CHECK(backend_options_error(o) == "--tf32 applies to fp32 products; --backend cuda --precision bf16 runs bf16 products");
  CHECK_THROWS_WITH_AS(make_backend(o), doctest::Contains("--tf32"), std::runtime_error);
}

TEST_CASE("cuda: backend_info reports the CUDA build, the driver and the devices") {
  const std::string info = backend_info();
#ifdef CHARGPT_HAVE_CUDA
  CHECK(info.find("backends: openblas") != std::string::npos);
  CHECK(info.find(", cuda") != std::string::npos);
  CHECK(info.find("cuda: compiled in (runtime ") != std::string::npos);
  CHECK(info.find(", cuBLAS ") != std::string::npos);
  CHECK(info.find("; driver: ") != std::string::npos);
  CHECK(info.find("; devices: ") != std::string::npos);
  CHECK(info.find("insufficient") == std::string::npos);
#else
  CHECK(info.find("cuda: not compiled in") != std::string::npos);
#endif
  MESSAGE(info);
}

// ================================================================ on a GPU (skipped without one)

TEST_CASE("cuda gpu: linear products match the CPU on random shapes to 1e-5 relative") {
  auto be = cuda_or_skip();
  if (!be) return;
  // fp32 cuBLAS vs OpenBLAS differ only in the order of the K-term sums:
  // relative error in the max norm below 1e-5 for K up to a few thousand.
  linear_vs_cpu(*be, false);
  DeviceStats st;
  REQUIRE(device_stats(*be, &st));
  CHECK(st.calls > 0);
  CHECK(st.phase_s[(int)DevicePhase::product] > 0);
  CHECK(device_product_flops(*be, 1024, 3) > 1e12);  // an H200 does ~50 TFLOP/s fp32
}

TEST_CASE("cuda gpu: with TF32 allowed products round their inputs (error above fp32's, within 1e-2)") {
  auto be = cuda_or_skip(/*tf32=*/true);
  if (!be) return;
  CHECK(be->name().find("tf32 allowed") != std::string::npos);
  // TF32 keeps 10 mantissa bits of each input (relative rounding 2^-11 ≈ 5e-4):
  // an error above 2e-5 (which fp32 never reaches here) shows the tensor cores ran.
  const int M = 1024, N = 1024, K = 1024;
  const auto A = random_vec((size_t)M * K, 1), B = random_vec((size_t)N * K, 2);  // C = A·Bᵀ
  const WeightTable table{B.data(), B.size(), {{0, B.size()}}};
  be->bind_weights(table);
  std::vector<float> C_g((size_t)M * N), C_c(C_g.size());
  be->linear_forward(C_g.data(), {A.data()}, {B.data(), 0}, {}, M, K, N);
  row_major_ref(false, true, M, N, K, A.data(), K, B.data(), K, 0.f, C_c.data(), N);
  const double e = rel_err(C_g.data(), C_c.data(), C_c.size());
  MESSAGE("tf32 relative error " << e);
  CHECK(e > 2e-5);
  CHECK(e < 1e-2);
  auto fp32 = cuda_or_skip(false);
  REQUIRE(fp32);
  fp32->bind_weights(table);
  fp32->linear_forward(C_g.data(), {A.data()}, {B.data(), 0}, {}, M, K, N);
  CHECK(rel_err(C_g.data(), C_c.data(), C_c.size()) < 1e-5);
}

TEST_CASE("cuda gpu: bf16 products equal the CPU's on the same bf16-rounded operands to 1e-4") {
  auto be = cuda_or_skip(false, Precision::bf16);
  if (!be) return;
  CHECK(be->name().find("bf16") != std::string::npos);
  CHECK(be->wants_bf16_inputs());
  linear_vs_cpu(*be, true);
}

TEST_CASE("cuda gpu: 10 training steps match the CPU to 1e-4 relative") {
  if (!cuda_or_skip()) return;
  const Config cfg = small_config();
  const auto split = random_tokens(4000, cfg.vocab_size, 3);
  Engine cpu(cfg, {.batch_size = 6, .shard_size = 2, .threads = 2, .seed = 11});
  auto recording = std::make_unique<test::RecordingBackend>(make_backend(cuda_options()));
  test::RecordingBackend& rec = *recording;
  Engine gpu(cfg, {.batch_size = 6, .shard_size = 2, .threads = 2, .seed = 11}, std::move(recording));
  const auto lc = train_losses(cpu, 10, split);
  const auto lg = train_losses(gpu, 10, split);
  for (int s = 0; s < 10; ++s) {
    CAPTURE(s);
    CHECK(std::fabs(lg[s] - lc[s]) <= 1e-4 * std::fabs(lc[s]));
  }
  CHECK(rec.weight_syncs() == 11u);  // weights_loaded, then once per step
  DeviceStats st;
  REQUIRE(device_stats(*rec.inner, &st));
  CHECK(st.cache_hits > 0);  // the default keeps the forward's inputs for the backward
  CHECK(st.cache_misses == 0);
}

TEST_CASE("cuda gpu: bf16 training tracks the fp32 CPU within 2e-2 relative over 10 steps") {
  if (!cuda_or_skip(false, Precision::bf16)) return;
  const Config cfg = small_config();
  const auto split = random_tokens(4000, cfg.vocab_size, 3);
  Engine cpu(cfg, {.batch_size = 6, .shard_size = 2, .threads = 2, .seed = 11});
  Engine gpu(cfg, {.batch_size = 6, .shard_size = 2, .threads = 2, .seed = 11}, cuda_options(Precision::bf16));
  const auto lc = train_losses(cpu, 10, split);
  const auto lg = train_losses(gpu, 10, split);
  for (int s = 0; s < 10; ++s) {
    CAPTURE(s);
    CHECK(std::isfinite(lg[s]));
    CHECK(std::fabs(lg[s] - lc[s]) <= 2e-2 * std::fabs(lc[s]));
  }
}

TEST_CASE("cuda gpu: the same weights after 3 steps at 1, 2 and 3 threads (fp32 and bf16)") {
  if (!cuda_or_skip()) return;
  for (Precision p : {Precision::fp32, Precision::bf16}) {
    CAPTURE(precision_name(p));
    const auto w1 = weights_after(1, 3, make_backend(cuda_options(p)));
    CHECK(same_bits(w1, weights_after(2, 3, make_backend(cuda_options(p)))));
    CHECK(same_bits(w1, weights_after(3, 3, make_backend(cuda_options(p)))));
  }
}

TEST_CASE("cuda gpu: the input cache and chunked copies change no bit of 3 training steps") {
  if (!cuda_or_skip()) return;
  for (Precision p : {Precision::fp32, Precision::bf16}) {
    CAPTURE(precision_name(p));
    std::vector<float> plain;
    {
      EnvFor env({{"CHARGPT_CUDA_INPUT_CACHE", "0"}, {"CHARGPT_CUDA_CHUNK_KB", "0"}, {"CHARGPT_CUDA_TIMERS", "0"}});
      plain = weights_after(2, 3, make_backend(cuda_options(p)));
    }
    EnvFor env({{"CHARGPT_CUDA_INPUT_CACHE", "verify"}, {"CHARGPT_CUDA_CHUNK_KB", "4"}, {"CHARGPT_CUDA_TIMERS", "1"}});
    CHECK(same_bits(plain, weights_after(2, 3, make_backend(cuda_options(p)))));
  }
}
