// `chargpt bench`: the statistics on fixed inputs, thread lists, the Amdahl fit, the report's
// columns on a fixed result, and a smoke run of the subcommand on a tiny model and a generated corpus.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/bench_report.h"
#include "engine/memory.h"
#include "support.h"
#include "io/data.h"
#include "base/rng.h"

using namespace chargpt;
namespace fs = std::filesystem;

TEST_CASE("bench: median of odd and even counts") {
  CHECK(median({3, 1, 2}) == 2.0);
  CHECK(median({4, 1, 3, 2}) == 2.5);  // mean of the middle two
  CHECK(median({7}) == 7.0);
  CHECK(median({5, 5, 1, 9, 9, 9}) == 7.0);
  CHECK_THROWS(median({}));
}

TEST_CASE("bench: scaled MAD") {
  // median 3, absolute deviations {2,1,0,1,97}, their median 1; the outlier does not matter
  CHECK(scaled_mad({1, 2, 3, 4, 100}) == doctest::Approx(1.4826).epsilon(1e-12));
  // median 2.5, deviations {1.5,.5,.5,1.5}, their median 1
  CHECK(scaled_mad({1, 2, 3, 4}) == doctest::Approx(1.4826).epsilon(1e-12));
  CHECK(scaled_mad({10, 20, 30}) == doctest::Approx(14.826).epsilon(1e-12));
  CHECK(scaled_mad({2, 2, 2}) == 0.0);
  CHECK(scaled_mad({42}) == 0.0);
}

TEST_CASE("bench: parallel efficiency") {
  CHECK(parallel_efficiency(1.6, 2) == doctest::Approx(0.8));
  CHECK(parallel_efficiency(4.0, 4) == doctest::Approx(1.0));
  CHECK(parallel_efficiency(1.0, 1) == doctest::Approx(1.0));
  CHECK(parallel_efficiency(1.5, 4, 2) == doctest::Approx(0.75));  // over 2 threads, ideal is 2x
}

TEST_CASE("bench: Amdahl serial fraction and prediction") {
  // s = 0.2: t(1) = 10, t(2) = 10 (0.2 + 0.8/2) = 6, t(4) = 4, t(8) = 3
  CHECK(amdahl_serial_fraction(10, 1, 6, 2) == doctest::Approx(0.2));
  CHECK(amdahl_serial_fraction(10, 1, 4, 4) == doctest::Approx(0.2));
  CHECK(amdahl_serial_fraction(6, 2, 3, 8) == doctest::Approx(0.2));  // base other than 1 thread
  CHECK(amdahl_serial_fraction(10, 1, 5, 2) == doctest::Approx(0.0));  // perfect scaling
  CHECK(amdahl_serial_fraction(10, 1, 10, 2) == doctest::Approx(1.0));  // none
  CHECK(amdahl_serial_fraction(10, 1, 4, 2) < 0);  // superlinear is reported as it is
  CHECK_THROWS(amdahl_serial_fraction(10, 2, 5, 2));
  CHECK(amdahl_speedup(0.2, 8) == doctest::Approx(1 / 0.3));
  CHECK(amdahl_speedup(0.2, 64) == doctest::Approx(1 / (0.2 + 0.8 / 64)));
  CHECK(amdahl_speedup(0.0, 16) == doctest::Approx(16));
  CHECK(amdahl_speedup(1.0, 64) == doctest::Approx(1));
  CHECK(amdahl_speedup(-0.5, 4) == doctest::Approx(4));  // clamped to s = 0
}

TEST_CASE("bench: shard granularity and the phase model") {
  CHECK(shard_granularity(12, 1) == doctest::Approx(1.0));
  CHECK(shard_granularity(12, 2) == doctest::Approx(0.5));
  CHECK(shard_granularity(12, 8) == doctest::Approx(2.0 / 12));  // 8 threads still need 2 rounds
  CHECK(shard_granularity(12, 64) == doctest::Approx(1.0 / 12));
  CHECK(shard_granularity(0, 8) == doctest::Approx(1.0 / 8));    // no shards: perfectly divisible
  // Work split inside a shard: 6 shards of 2 row blocks (baby) stop at 12-way, not 6-way.
  CHECK(shard_granularity(6, 8, 2) == doctest::Approx(2.0 / 12));  // 12 tasks on 8 threads: 2 task times
  CHECK(shard_granularity(6, 16, 2) == doctest::Approx(1.0 / 12));
  CHECK(shard_granularity(6, 4, 2) == doctest::Approx(3.0 / 12));  // rounds of 4 and 2 shards: 8 and 4 tasks on 4
  // 16 shards of 4 blocks (nanogpt) on 64 threads: one round of 64 tasks.
  CHECK(shard_granularity(16, 64, 4) == doctest::Approx(1.0 / 64));
  // 5 rounds of 3 shards (12 tasks: 4 task times each), then 1 shard (4 tasks: 2): 22 of 64.
  CHECK(shard_granularity(16, 3, 4) == doctest::Approx(22.0 / 64));
  // a phase with s = 0.1 in 12 shards: t(8) = 12 (0.1 + 0.9 * 2/12) = 3
  CHECK(phase_serial_fraction(12, 1, 3, 8, 12) == doctest::Approx(0.1));
  CHECK(phase_serial_fraction(10, 1, 6, 2) == doctest::Approx(0.2));
  PhaseModel m{0.8, 0.2, 0.0, 0.0, 0.5, 0.0, 12};
  CHECK(phase_model_speedup(m, 1) == doctest::Approx(1.0));
  CHECK(phase_model_speedup(m, 64) == doctest::Approx(1 / (0.8 / 12 + 0.2 * (0.5 + 0.5 / 64))));
}

TEST_CASE("bench: Amdahl fit from rows") {
  auto row = [](int n, double ms, double fb, double ro, bool over = false) {
    BenchRow r;
    r.threads = n;
    r.oversubscribed = over;
    r.median_s = ms;
    r.fwd_bwd_s = fb;
    r.reduce_opt_s = ro;
    r.rest_s = ms - fb - ro;
    return r;
  };
  // 1 thread: 8 fwd+bwd (all parallel), 2 reduce+opt (half serial) = 10; at 2 threads 4 + 1.5 = 5.5
  std::vector<BenchRow> rows = {row(1, 10, 8, 2), row(2, 5.5, 4, 1.5), row(4, 9, 4, 5, true)};
  AmdahlFit f = fit_amdahl(rows, 8);
  REQUIRE(f.valid);
  CHECK(f.n == 2);  // the oversubscribed row is not used
  CHECK(f.speedup == doctest::Approx(10 / 5.5));
  CHECK(f.serial_fraction == doctest::Approx(0.1));  // = 0.2 * 0.5
  CHECK(f.phases.fwd_bwd_frac == doctest::Approx(0.8));
  CHECK(f.phases.fwd_bwd_serial == doctest::Approx(0.0));
  CHECK(f.phases.reduce_opt_serial == doctest::Approx(0.5));
  REQUIRE(f.predict_at == std::vector<int>{8, 16, 64});
  CHECK(f.predicted[0] == doctest::Approx(1 / (0.1 + 0.9 / 8)));
  // fwd+bwd in 8 shards stops at 8-way: at 16 and 64 threads it takes 1/8
  CHECK(f.predicted_phase_model[2] == doctest::Approx(1 / (0.8 / 8 + 0.2 * (0.5 + 0.5 / 64))));
  CHECK(f.round_speedups.empty());  // no round medians given
  CHECK_FALSE(fit_amdahl({row(1, 10, 8, 2)}, 8).valid);
  // paired rounds: speedups 10/6 (s = 0.2) and 10/5 (s = 0)
  rows[0].round_median_s = {10, 10};
  rows[1].round_median_s = {6, 5};
  f = fit_amdahl(rows, 8);
  REQUIRE(f.round_speedups.size() == 2);
  CHECK(f.round_speedups[0] == doctest::Approx(10.0 / 6));
  CHECK(f.serial_fraction_lo == doctest::Approx(0.0));
  CHECK(f.serial_fraction_hi == doctest::Approx(0.2));
}

TEST_CASE("bench: thread lists") {
  CHECK(default_thread_counts(1) == std::vector<int>{1});
  CHECK(default_thread_counts(2) == std::vector<int>{1, 2});
  CHECK(default_thread_counts(6) == std::vector<int>{1, 2, 4, 6});
  CHECK(default_thread_counts(8) == std::vector<int>{1, 2, 4, 8});
  // parse_thread_list is the command line's: tests/cli/test_cli.cpp
}

namespace {

std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

}  // namespace

TEST_CASE("bench: run_bench trains the same model at every thread count") {
  Dataset ds = make_dataset(test::word_corpus());
  BenchOptions o;
  o.model.n_layer = 1;
  o.model.n_head = 2;
  o.model.n_embd = 16;
  o.model.block_size = 16;
  o.batch_size = 4;
  o.threads = {2, 1};
  o.steps = 2;
  o.warmup = 1;
  o.rounds = 2;
  o.sgemm_n = 64;
  o.sgemm_reps = 1;
  BenchResult r = run_bench(o, ds.train, ds.tok.size(), nullptr);
  REQUIRE(r.rows.size() == 2);
  CHECK(r.rows[0].threads == 1);
  CHECK(r.rows[1].threads == 2);
  for (const auto& row : r.rows) {
    CHECK(row.step_s.size() == 4);
    CHECK(row.round_median_s.size() == 2);
    CHECK(row.median_s > 0);
    CHECK(std::isfinite(row.loss_last));
    CHECK(row.sgemm_flops_per_s > 0);
    CHECK(row.mfu > 0);
  }
  CHECK(r.rows[0].speedup == 1.0);
  CHECK(r.losses_identical);
  CHECK(r.rows[0].loss_last == r.rows[1].loss_last);
}

TEST_CASE("bench: chargpt bench smoke run writes the CSV") {
  const test::TempDir dir("bench");
  const std::string data = test::write_corpus(dir), csv = dir / "out.csv";
  const auto [status, out] = test::run_cli("bench --data " + data +
                                           " --n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4"
                                           " --threads 1,2 --steps 2 --warmup 1 --rounds 1 --sgemm-size 64 -q --csv " +
                                           csv);
  INFO(out);
  REQUIRE(status == 0);
  CHECK(out.find("Amdahl") != std::string::npos);

  std::ifstream f(csv);
  REQUIRE(f);
  std::string header, line;
  std::getline(f, header);
  const auto cols = split_csv(header);
  for (const char* want : {"threads", "ms_median", "ms_mad", "tok_per_s", "speedup", "efficiency", "mfu",
                           "fwd_bwd_ms", "reduce_opt_ms", "rest_ms", "loss_last", "peak_rss_mib", "oversubscribed"})
    CHECK(std::find(cols.begin(), cols.end(), want) != cols.end());
  const size_t loss_col = std::find(cols.begin(), cols.end(), "loss_last") - cols.begin();
  std::vector<int> threads;
  while (std::getline(f, line)) {
    const auto v = split_csv(line);
    REQUIRE(v.size() == cols.size());
    threads.push_back(std::stoi(v[0]));
    const double loss = std::stod(v[loss_col]);
    CHECK(std::isfinite(loss));
    CHECK(loss > 0);
  }
  CHECK(threads == std::vector<int>{1, 2});

  // bad usage exits 2
  CHECK(test::run_cli("bench --threads 0 --data " + data).status == 2);
}

namespace {

BenchResult fixed_result() {
  BenchResult r;
  r.opt.model.vocab_size = 65;
  r.hardware_threads = 2;
  r.n_shards = 6;
  for (int t = 1; t <= 3; ++t) {
    BenchRow w;
    w.threads = t;
    w.oversubscribed = t > 2;
    w.threads_seen = w.concurrency_cap = t;
    w.step_s = {0.1, 0.2, 0.3};
    w.round_median_s = {0.125 / t};
    w.median_s = 0.25 / t;
    w.mad_s = 0.001;
    w.fwd_bwd_s = 0.2 / t;
    w.reduce_opt_s = 0.04 / t;
    w.rest_s = 0.01 / t;
    w.speedup = t;
    w.efficiency = 1;
    w.model_flops_per_s = 2.5e9 * t;
    w.mfu = 0.5;
    w.loss_last = 2.5;
    w.other_cpu_frac = t == 1 ? -1 : 0.25;
    w.engine_bytes = 3 * 1048576;
    if (t == 2) w.device.valid = true, w.device.product_ms = 12.5;  // a device backend's split
    r.rows.push_back(w);
  }
  r.amdahl = fit_amdahl(r.rows, r.n_shards);
  return r;
}

}  // namespace

TEST_CASE("bench: one column table gives the CSV and the JSON the same values") {
  // The CSV's columns are a contract with scripts/plots/plot_scaling.py and users' files.
  CHECK(bench_csv_header() ==
        "threads,oversubscribed,concurrency_cap,threads_seen,timed_steps,ms_median,ms_mad,tok_per_s,speedup,"
        "efficiency,model_gflops,sgemm_gflops,mfu,fwd_bwd_ms,reduce_opt_ms,rest_ms,fwd_bwd_pct,reduce_opt_pct,"
        "rest_pct,loss_first,loss_last,engine_mib,peak_rss_mib,other_cpu_pct,sgemm_io_gflops,mfu_io,dev_call_ms,"
        "dev_staging_ms,dev_cpu_ops_ms,dev_weight_upload_ms,dev_upload_ms,dev_product_ms,dev_download_ms,dev_mb_up,"
        "dev_mb_down,dev_weight_mb_up,dev_cache_hits,dev_cache_misses");
  const BenchResult r = fixed_result();
  std::ostringstream csv;
  write_bench_csv(r, csv);
  std::istringstream in(csv.str());
  std::string line;
  std::getline(in, line);
  const auto cols = split_csv(line);
  const auto json = bench_json(r);
  REQUIRE(json["rows"].size() == 3);
  for (int i = 0; i < 3; ++i) {
    REQUIRE(std::getline(in, line));
    const auto v = split_csv(line);
    REQUIRE(v.size() == cols.size());
    auto at = [&](const std::string& name) { return v[std::find(cols.begin(), cols.end(), name) - cols.begin()]; };
    CHECK(at("threads") == std::to_string(i + 1));
    CHECK(at("oversubscribed") == (i == 2 ? "1" : "0"));
    CHECK(at("timed_steps") == "3");
    CHECK(std::stod(at("ms_median")) == doctest::Approx(250.0 / (i + 1)).epsilon(1e-6));
    CHECK(at("engine_mib") == "3.00");
    CHECK(at("model_gflops") == (i == 0 ? "2.500" : i == 1 ? "5.000" : "7.500"));
    CHECK(at("fwd_bwd_pct") == "80.00");  // 0.2 of 0.25
    CHECK(at("other_cpu_pct") == (i == 0 ? "-1.0" : "25.0"));
    CHECK(at("dev_product_ms") == (i == 1 ? "12.5000" : "-1.0000"));
    const auto& row = json["rows"][i];
    CHECK(row["threads"] == i + 1);
    CHECK(row["oversubscribed"] == (i == 2));
    CHECK(row["ms_median"].get<double>() == 1e3 * r.rows[i].median_s);
    CHECK(row["engine_bytes"] == 3 * 1048576);
    CHECK(row["model_flops_per_s"].get<double>() == 2.5e9 * (i + 1));
    CHECK(row["round_medians_ms"].size() == 1);
    // Every JSON column and the two per-round series, nothing else.
    size_t n_json = 2;
    for (const BenchColumn& c : bench_columns()) {
      n_json += (c.outputs & kJson) != 0;
      if (c.outputs & kJson) CHECK_MESSAGE(row.contains(c.name), c.name);
    }
    CHECK(row.size() == n_json);
  }
  CHECK_FALSE(std::getline(in, line));
  CHECK_THROWS_AS(bench_column("no_such_column"), std::logic_error);
}

TEST_CASE("bench: the terminal table shows each row's cells from the same columns") {
  std::ostringstream out;
  print_bench_table(fixed_result(), out);
  const std::string s = out.str();
  CHECK(s.find(" threads     ms/step (MAD)     tok/s  speedup    eff") != std::string::npos);
  // threads, ms (MAD), tok/s, speedup, eff, GFLOP/s, sgemm, MFU, phases, loss, engine, peakRSS, others
  CHECK(s.find("       1     250.00 (1.00)         0    1.00x   100%     2.5     0.0  50.0%  "
               "200.00 80% | 40.00 16% | 10.00 4%  0.000 -> 2.500      3.0      0.0       ?") != std::string::npos);
  CHECK(s.find("      3*      83.33 (1.00)") != std::string::npos);
  CHECK(s.find("     25%\n") != std::string::npos);
}

TEST_CASE("bench: the memory table's shapes and the estimate that does not grow with the shard count") {
  const std::vector<MemoryRow> rows = memory_rows({1, 2}, 65);
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].name == "baby");
  CHECK(rows[1].name == "nanogpt");
  CHECK(rows[2].name == "gpt2-sm");
  CHECK(rows[2].n_params == 85302528);  // L12 C768 T256 with 65 characters
  for (const MemoryRow& m : rows) CHECK(m.bytes[0] < m.bytes[1]);  // a second shard in flight
  CHECK(rows[1].bytes[1] <= 400.0 * 1048576);  // nanogpt at 2 threads
  // 64 sequences in 64, 16 or 4 shards, 1-sequence passes, 2 in flight: the same bytes.
  const Config nano = rows[1].model;
  const double b16 = estimate_train_bytes(nano, 64, 4, 2, 0, 1);
  CHECK(estimate_train_bytes(nano, 64, 1, 2, 0, 1) == b16);
  CHECK(estimate_train_bytes(nano, 64, 16, 2, 0, 1) == b16);
}
