#pragma once
// Subcommands that live in their own files. Each returns the process exit code
// or throws (std::runtime_error for runtime failures, chargpt::UsageError for bad usage).
#include <stdexcept>

#include <cxxopts.hpp>

#include "chargpt/backend.h"
#include "chargpt/model.h"

namespace chargpt {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The model and batch options (--preset baby|nanogpt and the overrides,
// --shard-size), added to a subcommand's options and read back, checked.
void add_model_options(cxxopts::Options& o);
void read_model_options(const cxxopts::ParseResult& r, Config& cfg, int& batch_size, int& shard_size);

// --backend openblas|onednn|cuda and --precision fp32|bf16 (bf16 without --backend: onednn).
void add_backend_options(cxxopts::Options& o);
BackendOptions read_backend_options(const cxxopts::ParseResult& r);

// Parses argv, turning cxxopts' errors and stray arguments into UsageError.
cxxopts::ParseResult parse_options(cxxopts::Options& o, int argc, char** argv);
// With --help: prints the options with their defaults and returns true.
bool wants_help(cxxopts::Options& o, const cxxopts::ParseResult& r);

int cmd_sample(int argc, char** argv);  // src/cmd_sample.cpp
int cmd_bench(int argc, char** argv);   // src/cmd_bench.cpp

}  // namespace chargpt
