#pragma once
// Subcommands that live in their own files. Each returns the process exit code
// or throws (std::runtime_error for runtime failures, chargpt::UsageError for bad usage).
#include <stdexcept>

namespace chargpt {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int cmd_sample(int argc, char** argv);  // src/cmd_sample.cpp
int cmd_bench(int argc, char** argv);   // src/cmd_bench.cpp

}  // namespace chargpt
