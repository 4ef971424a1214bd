// The CUDA backend's switches (input cache, chunked copies, timers, bf16), its
// error paths (a failed weight upload, release errors after a failure), the
// device choice under a launcher and the no-device message, all on the CPU:
// the device backend runs on the emulated device of cuda_test_util.h.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <thread>

#include "cuda_test_util.h"

using namespace chargpt;
using namespace chargpt::cuda_test;

namespace {

DeviceTuning tuning(DeviceTuning::InputCache cache, size_t chunk_bytes, bool timers, bool bf16 = false) {
  DeviceTuning t;
  t.input_cache = cache;
  t.chunk_bytes = chunk_bytes;
  t.timers = timers;
  t.bf16 = bf16;
  return t;
}

using IC = DeviceTuning::InputCache;

// A table of one tensor (index 0): all of w.
WeightTable one_tensor(const std::vector<float>& w) { return {w.data(), w.size(), {{0, w.size()}}}; }

}  // namespace

TEST_CASE("cuda tests: rel_err fails on a NaN or an infinity in either array") {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::vector<float> ref = {1.f, 2.f, 3.f};
  CHECK(rel_err(ref.data(), ref.data(), 3) == 0.0);
  for (float bad : {nan, inf, -inf}) {
    std::vector<float> a = ref;
    a[1] = bad;
    CHECK_FALSE(rel_err(a.data(), ref.data(), 3) < 1e-6);
    CHECK_FALSE(rel_err(ref.data(), a.data(), 3) < 1e-6);
  }
  std::vector<float> all_nan(3, nan);
  CHECK_FALSE(rel_err(all_nan.data(), ref.data(), 3) < 1.0);
}

TEST_CASE("cuda switches: input cache, chunked copies and timers change no bit of 3 training steps") {
  // The plain path: every input uploaded with each call, one copy per region, no timers.
  DeviceLog log0;
  const auto plain = weights_after(2, 3, emulated_backend(log0, tuning(IC::off, 0, false)));
  const struct {
    const char* what;
    DeviceTuning t;
  } variants[] = {{"cache", tuning(IC::on, 0, false)},
                  {"cache verify, 4 KiB chunks, timers", tuning(IC::verify, 4096, true)},
                  {"1 KiB chunks", tuning(IC::off, 1024, false)},
                  {"defaults", DeviceTuning{}}};
  for (const auto& v : variants) {
    CAPTURE(v.what);
    DeviceLog log;
    CHECK(same_bits(plain, weights_after(2, 3, emulated_backend(log, v.t))));
    CHECK(log.live == 0);
  }
  // The cache saves the backward's upload of every linear input: 4 per layer and the LM head's.
  DeviceLog log_off, log_on;
  auto off = emulated_backend(log_off, tuning(IC::off, 0, false));
  auto on = emulated_backend(log_on, tuning(IC::on, 0, false));
  const Config cfg = small_config();
  const auto split = random_tokens(4000, cfg.vocab_size, 3);
  const EngineOptions eo{.batch_size = 6, .shard_size = 2, .threads = 1, .seed = 11};
  Engine e_off(cfg, eo, std::move(off)), e_on(cfg, eo, std::move(on));
  train_losses(e_off, 2, split);
  train_losses(e_on, 2, split);
  DeviceStats s_off, s_on;
  REQUIRE(device_stats(e_off.backend(), &s_off));
  REQUIRE(device_stats(e_on.backend(), &s_on));
  const long linears = 2 * 3 * (4 * cfg.n_layer + 1);  // steps × shards × (per layer + LM head)
  CHECK(s_on.cache_hits == linears);
  CHECK(s_on.cache_misses == 0);
  CHECK(s_off.cache_hits == 0);
  const double R = 2 * cfg.block_size, C = cfg.n_embd;
  const double saved = 2 * 3 * 4.0 * R * (cfg.n_layer * (3 * C + 4 * C) + C);  // bytes of the inputs not re-sent
  CHECK(s_off.bytes_up - s_on.bytes_up == doctest::Approx(saved));
  CHECK_FALSE(device_stats(test::openblas_backend(), &s_on));
}

TEST_CASE("cuda input cache: another lane's later forward of the same pointer, or another shape, is not used") {
  DeviceLog log;
  auto be = emulated_backend(log, tuning(IC::on, 0, false));
  const int R = 16, IC_ = 24, OC = 8;
  const auto W = random_vec((size_t)OC * IC_, 1);
  be->bind_weights(one_tensor(W));
  auto x = random_vec((size_t)R * IC_, 2);
  const auto x2 = random_vec((size_t)R * IC_, 3);
  const auto dout = random_vec((size_t)R * OC, 4);
  std::vector<float> out((size_t)R * OC), dw((size_t)OC * IC_), dw_ref(dw.size());
  be->linear_forward(out.data(), {x.data()}, {W.data(), 0}, {}, R, IC_, OC);  // this lane caches x
  // Another thread (another lane) writes new content at the same address and runs its forward.
  std::thread([&] {
    std::copy(x2.begin(), x2.end(), x.begin());
    std::vector<float> o2(out.size());
    be->linear_forward(o2.data(), {x.data()}, {W.data(), 0}, {}, R, IC_, OC);
  }).join();
  be->linear_backward(nullptr, dw.data(), nullptr, dout.data(), {x.data()}, {W.data(), 0}, R, IC_, OC, false);
  test::openblas_backend().linear_backward(nullptr, dw_ref.data(), nullptr, dout.data(), {x2.data()}, {W.data(), 0}, R,
                                           IC_, OC, false);
  CHECK(rel_err(dw.data(), dw_ref.data(), dw.size()) < 1e-6);  // the new content, not this lane's stale copy
  DeviceStats s;
  REQUIRE(device_stats(*be, &s));
  CHECK(s.cache_hits == 0);
  CHECK(s.cache_misses == 1);
  // The same pointer with fewer rows: not the cached shape.
  be->linear_forward(out.data(), {x.data()}, {W.data(), 0}, {}, R, IC_, OC);
  be->linear_backward(nullptr, dw.data(), nullptr, dout.data(), {x.data()}, {W.data(), 0}, R / 2, IC_, OC, false);
  test::openblas_backend().linear_backward(nullptr, dw_ref.data(), nullptr, dout.data(), {x.data()}, {W.data(), 0},
                                           R / 2, IC_, OC, false);
  CHECK(rel_err(dw.data(), dw_ref.data(), dw.size()) < 1e-6);
  REQUIRE(device_stats(*be, &s));
  CHECK(s.cache_misses == 2);
}

TEST_CASE("cuda input cache: verify mode throws when the input changed between forward and backward") {
  DeviceLog log;
  auto be = emulated_backend(log, tuning(IC::verify, 0, false));
  const int R = 4, IC_ = 8, OC = 4;
  const auto W = random_vec((size_t)OC * IC_, 1);
  be->bind_weights(one_tensor(W));
  auto x = random_vec((size_t)R * IC_, 2);
  const auto dout = random_vec((size_t)R * OC, 3);
  std::vector<float> out((size_t)R * OC), dw((size_t)OC * IC_);
  be->linear_forward(out.data(), {x.data()}, {W.data(), 0}, {}, R, IC_, OC);
  CHECK_NOTHROW(
      be->linear_backward(nullptr, dw.data(), nullptr, dout.data(), {x.data()}, {W.data(), 0}, R, IC_, OC, false));
  x[5] += 1.f;
  CHECK_THROWS_WITH_AS(be->linear_backward(nullptr, dw.data(), nullptr, dout.data(), {x.data()}, {W.data(), 0}, R, IC_, OC, false),
                       doctest::Contains("changed between forward and backward"), std::logic_error);
}

TEST_CASE("cuda backend bf16 on an emulated device: products equal the CPU's on bf16-rounded operands") {
  DeviceLog log;
  auto be = emulated_backend(log, tuning(IC::on, 1024, true, /*bf16=*/true));
  CHECK(be->wants_bf16_inputs());
  Backend& cpu = test::openblas_backend();
  const int R = 37, IC_ = 50, OC = 30;
  auto params = random_vec((size_t)OC * IC_ + OC, 1);
  be->bind_weights({params.data(), params.size(), {{0, (size_t)OC * IC_}, {(size_t)OC * IC_, (size_t)OC}}});
  const Weight W{params.data(), 0}, b{params.data() + (size_t)OC * IC_, 1};
  const auto Wr = bf16_round(W.data, (size_t)OC * IC_);
  const auto inp = random_vec((size_t)R * IC_, 2), dout = random_vec((size_t)R * OC, 3);
  const auto inp_r = bf16_round(inp.data(), inp.size()), dout_r = bf16_round(dout.data(), dout.size());
  std::vector<float> out_d((size_t)R * OC), out_c(out_d.size());
  be->linear_forward(out_d.data(), {inp.data()}, W, b, R, IC_, OC);
  cpu.linear_forward(out_c.data(), {inp_r.data()}, {Wr.data()}, b, R, IC_, OC);
  CHECK(rel_err(out_d.data(), out_c.data(), out_c.size()) < 1e-6);
  for (bool accumulate : {false, true}) {
    auto dw_d = random_vec((size_t)OC * IC_, 5), dw_c = dw_d;
    auto db_d = random_vec(OC, 6), db_c = db_d;
    std::vector<float> di_d((size_t)R * IC_), di_c(di_d.size()), scratch(dw_d.size());
    be->linear_backward(di_d.data(), dw_d.data(), db_d.data(), dout.data(), {inp.data()}, W, R, IC_, OC, accumulate);
    cpu.linear_backward(di_c.data(), dw_c.data(), nullptr, dout_r.data(), {inp_r.data()}, {Wr.data()}, R, IC_, OC,
                        accumulate);
    cpu.linear_backward(nullptr, scratch.data(), db_c.data(), dout.data(), {inp.data()}, W, R, IC_, OC, accumulate);
    CHECK(rel_err(di_d.data(), di_c.data(), di_c.size()) < 1e-6);
    CHECK(rel_err(dw_d.data(), dw_c.data(), dw_c.size()) < 1e-6);
    CHECK(rel_err(db_d.data(), db_c.data(), db_c.size()) < 1e-5);  // fp32 from the fp32 dout
  }
  CHECK(log.bf16_gemms > 0);
  CHECK(log.exact_gemms > 0);  // the bias broadcast
  // The model's bf16 copies (Engine) and the cache: the same bits as without the cache.
  DeviceLog l1, l2;
  const auto a = weights_after(2, 3, emulated_backend(l1, tuning(IC::off, 0, false, true)));
  const auto c = weights_after(2, 3, emulated_backend(l2, tuning(IC::verify, 4096, true, true)));
  CHECK(same_bits(a, c));
  DeviceLog l3;
  CHECK_FALSE(same_bits(a, weights_after(2, 3, emulated_backend(l3))));  // bf16 is not fp32
}

TEST_CASE("cuda timers: stats split the calls' time and count the bytes, and the product-only rate") {
  DeviceLog log;
  auto be = emulated_backend(log, tuning(IC::on, 4096, true));
  const Config cfg = small_config();
  const auto split = random_tokens(4000, cfg.vocab_size, 3);
  Engine e(cfg, {.batch_size = 6, .shard_size = 2, .threads = 2, .seed = 11}, std::move(be));
  train_losses(e, 2, split);
  DeviceStats s;
  REQUIRE(device_stats(e.backend(), &s));
  CHECK(s.timers);
  CHECK(s.calls == 2 * 3 * 2 * (4 * cfg.n_layer + 1));  // steps × shards × (forward + backward) × linears
  CHECK(s.call_s > 0);
  CHECK(s.staging_s > 0);
  for (int i = 0; i < kDevicePhases; ++i) CHECK(s.phase_s[i] > 0);
  CHECK(s.phase_s[0] + s.phase_s[1] + s.phase_s[2] <= s.call_s * 1.01);  // emulated: all inside the calls
  CHECK(s.bytes_up > 0);
  CHECK(s.bytes_down > 0);
  CHECK(s.weight_bytes_up == doctest::Approx(2.0 * 4 * e.num_params()));  // one upload per step
  CHECK(log.waits == log.records);  // every chunk's event waited for
  CHECK(device_product_flops(e.backend(), 64, 2) > 0);
  CHECK(device_product_flops(test::openblas_backend(), 64, 2) == 0);
}

TEST_CASE("cuda switches: CHARGPT_CUDA_* are read in one place and bad values name the variable") {
  auto with = [](const char* k, const char* v) {
    setenv(k, v, 1);
    DeviceTuning t;
    std::string err;
    try {
      t = device_tuning_from_env();
    } catch (const std::invalid_argument& e) {
      err = e.what();
    }
    unsetenv(k);
    return std::make_pair(t, err);
  };
  const DeviceTuning d = device_tuning_from_env();
  CHECK(d.input_cache == IC::on);
  CHECK(d.chunk_bytes == 1u << 20);
  CHECK(d.timers);
  CHECK(with("CHARGPT_CUDA_INPUT_CACHE", "0").first.input_cache == IC::off);
  CHECK(with("CHARGPT_CUDA_INPUT_CACHE", "verify").first.input_cache == IC::verify);
  CHECK(with("CHARGPT_CUDA_CHUNK_KB", "0").first.chunk_bytes == 0u);
  CHECK(with("CHARGPT_CUDA_CHUNK_KB", "64").first.chunk_bytes == 65536u);
  CHECK_FALSE(with("CHARGPT_CUDA_TIMERS", "0").first.timers);
  CHECK(with("CHARGPT_CUDA_INPUT_CACHE", "yes").second == "CHARGPT_CUDA_INPUT_CACHE='yes': expected 0, 1 or verify");
  CHECK(with("CHARGPT_CUDA_CHUNK_KB", "-1").second.find("CHARGPT_CUDA_CHUNK_KB='-1'") == 0);
  CHECK(with("CHARGPT_CUDA_TIMERS", "on").second.find("CHARGPT_CUDA_TIMERS='on'") == 0);
}

TEST_CASE("cuda errors: a weight upload that throws keeps its marks, so the retry uploads them") {
  WeightUploads u;
  u.bind(100);
  auto r = u.begin_flush();
  u.abort_flush(r);
  CHECK(u.pending());
  CHECK(u.begin_flush() == r);

  DeviceLog log;
  auto be = emulated_backend(log);
  const int R = 3, IC_ = 10, OC = 10;
  const auto W = random_vec((size_t)OC * IC_, 1), x = random_vec((size_t)R * IC_, 2);
  std::vector<float> out((size_t)R * OC), ref(out.size());
  be->bind_weights(one_tensor(W));
  log.fail_upload_in = 1;  // the weights' upload
  CHECK_THROWS_WITH_AS(be->linear_forward(out.data(), {x.data()}, {W.data(), 0}, {}, R, IC_, OC),
                       doctest::Contains("upload failed"), std::runtime_error);
  be->linear_forward(out.data(), {x.data()}, {W.data(), 0}, {}, R, IC_, OC);
  test::openblas_backend().linear_forward(ref.data(), {x.data()}, {W.data(), 0}, {}, R, IC_, OC);
  CHECK(rel_err(out.data(), ref.data(), out.size()) < 1e-6);
  CHECK(log.uploads_from(W.data(), W.size()) == 1u);  // the retry's, once
}

TEST_CASE("cuda errors: after a failed call, releasing prints nothing, otherwise only the first failure") {
  auto lines = [](bool failed, int releases) {
    std::FILE* f = std::tmpfile();
    REQUIRE(f);
    ReleaseReport r;
    if (failed) r.call_failed();
    for (int i = 0; i < releases; ++i) r.report("CUDA error while releasing: lane " + std::to_string(i), f);
    std::rewind(f);
    int n = 0;
    for (int c; (c = std::fgetc(f)) != EOF;) n += c == '\n';
    std::fclose(f);
    return std::make_pair(n, r.suppressed());
  };
  CHECK(lines(true, 80) == std::make_pair(0, 80L));  // the thrown error is the one line the user sees
  CHECK(lines(false, 80) == std::make_pair(1, 79L));
  CHECK(lines(false, 0) == std::make_pair(0, 0L));
}

TEST_CASE("cuda device choice: the local rank under a launcher, modulo the devices") {
  std::map<std::string, std::string> env;
  auto get = [&](const char* k) -> const char* {
    const auto it = env.find(k);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  std::string why;
  CHECK(choose_device(4, get, &why) == 0);
  CHECK(why == "no launcher's local rank");
  env["OMPI_COMM_WORLD_LOCAL_RANK"] = "5";
  CHECK(choose_device(4, get, &why) == 1);
  CHECK(why == "local rank 5 (OMPI_COMM_WORLD_LOCAL_RANK) mod 4");
  CHECK(choose_device(1, get, nullptr) == 0);
  env.clear();
  env["MPI_LOCALRANKID"] = "2";
  CHECK(choose_device(8, get, nullptr) == 2);
  env.clear();
  env["SLURM_LOCALID"] = "3";
  CHECK(choose_device(2, get, nullptr) == 1);
  env["OMPI_COMM_WORLD_LOCAL_RANK"] = "x1";
  CHECK_THROWS_WITH_AS(choose_device(2, get, nullptr), "OMPI_COMM_WORLD_LOCAL_RANK='x1': expected a non-negative integer",
                       std::invalid_argument);
}

TEST_CASE("cuda no-device reason: no driver, an old driver, no device, another error") {
  CHECK(no_device_reason(0, 13000, "cudaErrorInsufficientDriver", "CUDA driver version is insufficient for CUDA runtime version") ==
        "no NVIDIA driver is installed (libcuda.so.1 not found)");
  CHECK(no_device_reason(12040, 13000, "cudaErrorInsufficientDriver", "x") ==
        "the NVIDIA driver supports CUDA 12.4, older than this build's runtime 13.0 (update the driver)");
  CHECK(no_device_reason(13000, 13000, "", "").rfind("the driver (CUDA 13.0) reports no device", 0) == 0);
  CHECK(no_device_reason(13000, 13000, "cudaErrorNoDevice", "no CUDA-capable device is detected")
            .rfind("the driver (CUDA 13.0) reports no device", 0) == 0);
  CHECK(no_device_reason(13000, 13000, "cudaErrorDevicesUnavailable", "all CUDA-capable devices are busy") ==
        "all CUDA-capable devices are busy (cudaErrorDevicesUnavailable, driver CUDA 13.0)");
  CHECK(cuda_version_string(12080) == "12.8");
}

TEST_CASE("cuda backend on an emulated device: the same weights after 3 steps at 1, 2 and 3 threads") {
  DeviceLog l1, l2, l3;
  const auto w1 = weights_after(1, 3, emulated_backend(l1));
  CHECK(same_bits(w1, weights_after(2, 3, emulated_backend(l2))));
  CHECK(same_bits(w1, weights_after(3, 3, emulated_backend(l3))));
}
