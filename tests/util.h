#pragma once
// What the test files share: a temporary directory that removes itself, and
// run_cli, which runs the chargpt binary under test.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>

namespace chargpt::test {

// AddressSanitizer reserves terabytes of address space for its shadow memory, so a
// child run under a virtual-memory limit (prlimit --as, ulimit -v) cannot start.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kUnderAddressSanitizer = true;
#else
inline constexpr bool kUnderAddressSanitizer = false;
#endif

// A fresh directory under the system's temp dir, removed with everything in it
// when the object goes out of scope. Unique per process and per object.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "test") {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("chargpt_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  // A path inside the directory.
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  std::string str() const { return path.string(); }
};

struct RunResult {
  int status;  // exit code, or 128 + signal
  std::string output;
};

// Runs a shell command line (sh -c), stdout and stderr captured together.
inline RunResult run_shell(const std::string& script) {
  FILE* p = popen(("{\n" + script + "\n} 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), out};
}

// Runs the chargpt binary under test with a shell argument string; stdout and
// stderr are captured together.
inline RunResult run_cli(const std::string& args) { return run_shell(std::string(CHARGPT_BINARY) + " " + args); }

}  // namespace chargpt::test
