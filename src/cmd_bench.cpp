// `chargpt bench`: time training steps over a sweep of thread counts (see chargpt/bench.h for the method).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include <cxxopts.hpp>
#include <tbb/info.h>

#include "chargpt/bench.h"
#include "chargpt/cli.h"
#include "chargpt/train.h"
#include "chargpt/data.h"

namespace chargpt {

int cmd_bench(int argc, char** argv) {
  cxxopts::Options o("chargpt bench",
                     "Time training steps over a sweep of thread counts: one engine per count (same seed, same "
                     "init), rounds interleaved, median and scaled MAD per count, speedup, efficiency, MFU against "
                     "the measured sgemm rate, the phase split and an Amdahl fit.");
  add_model_options(o);
  add_backend_options(o);
  o.add_options("Bench")
      ("data", "training text (UTF-8)", cxxopts::value<std::string>()->default_value(TrainOptions{}.data_path))
      ("threads", "thread counts: a comma list like 1,2,3, or 'all' = 1, 2, 4, ... up to the hardware threads "
                  "(plus that count if it is not a power of two)", cxxopts::value<std::string>()->default_value("all"))
      ("steps", "timed steps per thread count per round", cxxopts::value<int>()->default_value("20"))
      ("warmup", "untimed steps per thread count before its first round", cxxopts::value<int>()->default_value("5"))
      ("rounds", "interleaved rounds over the thread counts", cxxopts::value<int>()->default_value("3"))
      ("lr", "constant learning rate", cxxopts::value<float>()->default_value("1e-3"))
      ("seed", "random seed (init and data order, the same for every thread count)",
       cxxopts::value<uint64_t>()->default_value("1337"))
      ("sgemm-size", "n of the n x n x n sgemm that measures the FLOP rate for MFU",
       cxxopts::value<int>()->default_value("1024"))
      ("csv", "also write the table as CSV to this file", cxxopts::value<std::string>())
      ("json", "print one JSON object on stdout (the table goes to stderr)")
      ("q,quiet", "no per-round progress on stderr")
      ("h,help", "show this help");
  const cxxopts::ParseResult r = parse_options(o, argc, argv);
  if (wants_help(o, r)) return 0;

  BenchOptions b;
  read_model_options(r, b.model, b.batch_size, b.shard_size);
  auto at_least = [](const char* flag, int v, int lo) {
    if (v < lo) throw UsageError(std::string("--") + flag + " must be >= " + std::to_string(lo) + ", got " +
                                 std::to_string(v));
  };
  b.steps = r["steps"].as<int>();
  b.warmup = r["warmup"].as<int>();
  b.rounds = r["rounds"].as<int>();
  b.sgemm_n = r["sgemm-size"].as<int>();
  at_least("steps", b.steps, 1);
  at_least("warmup", b.warmup, 0);
  at_least("rounds", b.rounds, 1);
  at_least("sgemm-size", b.sgemm_n, 1);
  b.lr = r["lr"].as<float>();
  if (!(b.lr > 0)) throw UsageError("--lr must be a positive number");
  b.seed = r["seed"].as<uint64_t>();
  b.backend = read_backend_options(r);
  b.threads = parse_thread_list(r["threads"].as<std::string>(), tbb::info::default_concurrency());
  const bool as_json = r.count("json") > 0;

  // Open the CSV before the (long) run, so a bad path fails at once.
  std::ofstream csv;
  std::string csv_path;
  if (r.count("csv")) {
    csv_path = r["csv"].as<std::string>();
    csv.open(csv_path, std::ios::trunc);
    if (!csv) throw std::runtime_error("cannot open '" + csv_path + "' for writing");
  }

  const std::string data_path = r["data"].as<std::string>();
  Dataset ds = load_dataset(data_path);
  BenchResult res = run_bench(b, ds.train, ds.tok.size(), r.count("quiet") ? nullptr : &std::cerr);
  res.data_path = data_path;

  if (csv.is_open()) {
    write_csv(res, csv);
    csv.close();
    if (!csv) throw std::runtime_error("cannot write '" + csv_path + "'");
  }
  if (as_json) {
    print_table(res, std::cerr);
    std::cout << bench_json(res).dump() << "\n" << std::flush;
  } else {
    print_table(res, std::cout);
    std::cout << std::flush;
  }
  return 0;
}

}  // namespace chargpt
