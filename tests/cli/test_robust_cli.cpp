// The command line under hostile conditions: limits on address space, threads
// and memory, a missing flag value, a log cut short, SIGHUP, and a second run
// on a checkpoint that is in use.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/rng.h"
#include "io/checkpoint.h"
#include "support.h"

extern char** environ;

using chargpt::test::bytes_of;
using chargpt::test::contains;
using chargpt::test::run_cli;
using chargpt::test::run_shell;
using chargpt::test::TempDir;
namespace fs = std::filesystem;

namespace {

const std::string& kTiny = chargpt::test::kTinyShapeFlags;

std::string corpus(const TempDir& dir) { return chargpt::test::write_corpus(dir, 3, 5000); }

int checkpoint_step(const std::string& path) {
  chargpt::Metadata meta;
  chargpt::load_model(path, &meta);
  return std::stoi(meta["step"]);
}

// Every line of a JSON Lines file parses and ends with a newline; returns the count.
int valid_jsonl_lines(const std::string& path) {
  const std::string text = bytes_of(path);
  if (!text.empty() && text.back() != '\n') return -1;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    if (!nlohmann::json::accept(line)) return -1;
    ++n;
  }
  return n;
}

// A training run in the background (output to files in dir), started once its log has a step line.
struct Background {
  pid_t pid = -1;
  explicit Background(const TempDir& dir, std::vector<std::string> args, const std::string& log) {
    args.insert(args.begin(), CHARGPT_BINARY);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, (dir / "bg_stdout.txt").c_str(), O_WRONLY | O_CREAT, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, (dir / "bg_stderr.txt").c_str(), O_WRONLY | O_CREAT, 0644);
    REQUIRE(posix_spawn(&pid, CHARGPT_BINARY, &fa, nullptr, argv.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    const auto t0 = std::chrono::steady_clock::now();
    while (bytes_of(log).find("\"step\"") == std::string::npos &&
           std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120))
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  int stop(int sig) {
    ::kill(pid, sig);
    int st = 0;
    ::waitpid(pid, &st, 0);
    pid = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  ~Background() {
    if (pid > 0) stop(SIGKILL);
  }
};

std::vector<std::string> endless_run(const std::string& data, const std::string& out, const std::string& log) {
  return {"train", "--data", data, "--out", out, "--log", log, "--log-interval", "1", "--n-layer", "1", "--n-embd",
          "16", "--n-head", "2", "--block-size", "16", "--batch-size", "4", "--steps", "100000000",
          "--eval-interval", "0", "--threads", "1"};
}

}  // namespace

TEST_CASE("cli: a second train on a checkpoint in use fails at once naming the lock and the holder pid") {
  TempDir dir("cli_lock");
  const std::string data = corpus(dir), out = dir / "w.safetensors", log = dir / "log.jsonl";
  Background first(dir, endless_run(data, out, log), log);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_cli("train --data " + data + kTiny + " --threads 1 --steps 3 --resume --out " + out);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CAPTURE(r.output);
  CHECK(r.status == 1);
  CHECK(contains(r.output, "the checkpoint '" + out + "' is in use by another chargpt train (pid " +
                               std::to_string(first.pid) + ", holding the lock '" + out + ".lock')"));
  CHECK(seconds < 30);
  // --force does not take it over either, and a reader needs no lock.
  r = run_cli("train --data " + data + kTiny + " --threads 1 --steps 3 --force --out " + out);
  CHECK(r.status == 1);
  CHECK(contains(r.output, "is in use by another chargpt train"));
  CHECK(first.stop(SIGTERM) == 143);
  const int step = checkpoint_step(out);
  CHECK(run_cli("eval --checkpoint " + out + " --data " + data + " --threads 1").status == 0);
  CHECK(!fs::exists(out + ".lock"));
  r = run_cli("train --data " + data + kTiny + " --threads 1 --resume --log " + log + " --steps " +
              std::to_string(step + 1) + " --out " + out);
  CAPTURE(r.output);
  CHECK(r.status == 0);
}

TEST_CASE("cli: SIGHUP saves at the end of the step and exits with 129") {
  TempDir dir("cli_sighup");
  const std::string data = corpus(dir), out = dir / "w.safetensors", log = dir / "log.jsonl";
  Background run(dir, endless_run(data, out, log), log);
  CHECK(run.stop(SIGHUP) == 129);
  CHECK(contains(bytes_of(dir / "bg_stderr.txt"), "SIGHUP: finishing this step and saving"));
  const int step = checkpoint_step(out);
  CHECK(step > 0);
  const auto r = run_cli("train --resume --data " + data + " --out " + out + " --log " + log + kTiny +
                         " --threads 1 --steps " + std::to_string(step + 2));
  CAPTURE(r.output);
  CHECK(r.status == 0);
  CHECK(valid_jsonl_lines(log) > 0);
}

TEST_CASE("cli: a log cut short by a full disk or a kill stays valid JSON Lines when resumed") {
  TempDir dir("cli_log_cut");
  const std::string data = corpus(dir), out = dir / "w.safetensors", log = dir / "log.jsonl";
  // The file size limit cuts a line in the middle (see test_cli's failed log write).
  auto r = run_cli("help >/dev/null; trap '' XFSZ; prlimit --fsize=65536 " CHARGPT_BINARY " train --data " + data +
                   kTiny + " --threads 1 --steps 100000 --log-interval 1 --out " + out + " --log " + log +
                   " 2>&1; echo status $?");
  CAPTURE(r.output);
  CHECK(contains(r.output, "status 1"));
  CHECK(valid_jsonl_lines(log) > 0);  // the part of the line that was written is gone
  const int step = checkpoint_step(out);
  // A kill in mid-write leaves a partial last line: the resumed run drops it before appending.
  { std::ofstream(log, std::ios::app) << "{\"type\":\"step\",\"st"; }
  r = run_cli("train --resume --data " + data + " --out " + out + " --log " + log + kTiny + " --threads 1 --steps " +
              std::to_string(step + 3) + " --log-interval 1");
  CAPTURE(r.output);
  CHECK(r.status == 0);
  const int lines = valid_jsonl_lines(log);
  CHECK(lines > 3);
  CHECK(contains(bytes_of(log), "\"step\":" + std::to_string(step + 3) + ","));
}

TEST_CASE("cli: a flag missing its value is named even when the next value is left over") {
  const auto r = run_cli("sample --prompt --tokens 5");
  CHECK(r.status == 2);
  CHECK(contains(r.output, "--prompt is missing its value (it would take '--tokens', one of this command's flags)"));
}

TEST_CASE("cli: a too small address-space limit is an error before OpenBLAS spins and so is a too large text") {
  if (chargpt::test::kUnderShadowMemorySanitizer) {
    CHARGPT_SKIP("an ASan or TSan build cannot run under a virtual-memory limit");
  }
  TempDir dir("cli_as");
  const std::string data = corpus(dir), out = dir / "w.safetensors";
  // 400 MB: what the binary maps at start plus one of OpenBLAS's 128 MiB buffers, not two. Without the
  // check, OpenBLAS retried its failing mmap forever; `timeout` ends such a run with 124.
  for (const std::string& cmd : {"train --steps 2 --out " + out + " --data " + data + " --threads 2",
                                "eval --checkpoint " + out + " --data " + data + " --threads 2"}) {
    const auto r = run_shell("prlimit --as=400000000 timeout -s KILL 120 " CHARGPT_BINARY " " + cmd +
                             " 2>&1; echo status $?");
    CAPTURE(cmd);
    CAPTURE(r.output);
    CHECK(contains(r.output, "status 1"));
    CHECK(contains(r.output, "MiB more address space"));
    CHECK(contains(r.output, "lower --threads or raise ulimit -v"));
  }
  // A text whose tokens do not fit: a message naming it, not std::bad_alloc.
  {
    std::ofstream f(dir / "big.txt");
    const std::string chunk(1 << 20, 'a');
    for (int i = 0; i < 64; ++i) f << chunk << '\n';
  }
  auto r = run_shell("prlimit --as=600000000 " CHARGPT_BINARY " train --threads 1 --steps 1" + kTiny + "--data " +
                     (dir / "big.txt") + " --out " + out + " --force 2>&1; echo status $?");
  CAPTURE(r.output);
  CHECK(contains(r.output, "status 1"));
  CHECK(contains(r.output, "loading --data '" + (dir / "big.txt") + "' (67108928 bytes) would need 0.6 GiB of memory"));
  CHECK(!contains(r.output, "bad_alloc"));
}

TEST_CASE("cli: under prlimit --nproc=1 every command that needs threads says so and exits 1") {
  const bool root = ::geteuid() == 0;
  if (chargpt::test::kSanitizerRuntimeThreads > 0)
    CHARGPT_SKIP("a sanitizer's runtime thread needs a second process slot under --nproc=1");
  if (run_shell("command -v prlimit && command -v setpriv").status != 0) {
    CHARGPT_SKIP("prlimit or setpriv (util-linux) is not installed");
  }
  TempDir dir("cli_nproc1");
  fs::permissions(dir.path, fs::perms::all);
  const std::string data = corpus(dir);
  const std::string as_user = root ? "setpriv --reuid=65534 --regid=65534 --clear-groups " : "";
  if (run_shell(as_user + CHARGPT_BINARY " --help >/dev/null").status != 0) {
    CHARGPT_SKIP("the binary cannot be run as nobody here (directory permissions)");
  }
  // One process for the user: OpenBLAS cannot start its threads when it loads, before main.
  const auto r = run_shell(as_user + "prlimit --nproc=1 " CHARGPT_BINARY " train --steps 2 --threads 2 --out " +
                           (dir / "w.safetensors") + " --data " + data + kTiny + " 2>&1; echo status $?");
  CAPTURE(r.output);
  CHECK(contains(r.output, "status 1"));
  CHECK(contains(r.output, "cannot start 2 threads (1 started, then: Resource temporarily unavailable)"));
  // A user's own OPENBLAS_NUM_THREADS is kept: then the message is about OpenBLAS.
  const auto r2 = run_shell(as_user + "env OPENBLAS_NUM_THREADS=2 prlimit --nproc=1 " CHARGPT_BINARY
                                      " info 2>&1; echo status $?");
  CAPTURE(r2.output);
  CHECK(contains(r2.output, "status 1"));
  CHECK(contains(r2.output, "OpenBLAS could not start its threads (OPENBLAS_NUM_THREADS=2)"));
}
