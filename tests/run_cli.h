#pragma once
// Runs the chargpt binary under test with a shell argument string; stdout and
// stderr are captured together.
#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace chargpt::test {

struct RunResult {
  int status;  // exit code, or 128 + signal
  std::string output;
};

inline RunResult run_cli(const std::string& args) {
  const std::string cmd = std::string(CHARGPT_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), out};
}

}  // namespace chargpt::test
