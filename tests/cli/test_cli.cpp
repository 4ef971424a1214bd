// The command line through the built binary: option tables (usage errors exit 2
// and name the flag, a flag missing its value, --help), presets, thread lists,
// the bench's report.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "engine/memory.h"
#include "train/train.h"
#include "base/rng.h"
#include "support.h"

extern char** environ;

using chargpt::test::bytes_of;
using chargpt::test::contains;
using chargpt::test::run_cli;
using chargpt::test::TempDir;
using chargpt::test::write_corpus;
namespace fs = std::filesystem;

namespace {

// --help wraps its lines: one space for every run of white space.
std::string squeeze(const std::string& s) {
  std::string out;
  for (char c : s)
    if (!std::isspace((unsigned char)c)) out += c;
    else if (out.empty() || out.back() != ' ') out += ' ';
  return out;
}

// A tiny model's flags: runs take well under a second.
const std::string& kTiny = chargpt::test::kTinyShapeFlags;

}  // namespace

TEST_CASE("cli: usage errors exit 2 and name the flag") {
  struct Case {
    const char* args;
    const char* message;
  };
  const Case cases[] = {
      {"train --steps -1", "--steps must be >= 0, got -1"},
      {"train --lr 0", "--lr must be > 0, got 0"},
      {"train --eval-iters 0", "--eval-iters must be >= 1, got 0"},
      {"train --threads -1", "--threads must be in [0, 4096], got -1"},
      {"train --beta2 1", "--beta2 must be in [0, 1), got 1"},
      {"train --lr nan", "--lr must be > 0, got nan"},
      {"train --steps banana", "--steps 'banana' is not an integer"},
      {"train --steps 1.5", "--steps '1.5' is not an integer"},
      {"train --steps 99999999999", "--steps '99999999999' is out of range"},
      {"train --seed -1", "--seed '-1' is not a non-negative integer"},
      {"train --lr 1x", "--lr '1x' is not a number"},
      {"train --block-size 5000", "--block-size must be in [1, 4096], got 5000"},
      {"train --n-embd 100 --n-head 3", "--n-embd 100 must be divisible by --n-head 3"},
      {"train --preset huge", "--preset 'huge' is not one of: baby, nanogpt"},
      {"train --resume --force", "--resume and --force cannot be used together"},
      {"train stray", "unexpected argument 'stray'"},
      {"train --frobnicate 1", "frobnicate"},
      {"eval --threads -2", "--threads must be in [0, 4096], got -2"},
      {"eval --split test", "--split 'test' must be val or train"},
      {"sample --tokens -1", "--tokens must be >= 0, got -1"},
      {"sample --top-p 0", "--top-p must be in (0, 1], got 0"},
      {"sample --temperature -0.5", "--temperature must be >= 0, got -0.5"},
      {"sample --prompt a --prompt-file b", "--prompt and --prompt-file cannot be used together"},
      {"bench --rounds 0", "--rounds must be >= 1, got 0"},
      {"bench --lr -1", "--lr must be > 0, got -1"},
      {"bench --threads 0", "thread counts must be between 1 and 4096, got 0"},
      {"bench --threads 1,,2", "--threads '1,,2': expected 'all' or a comma list"},
      {"bench --threads 1.5", "--threads '1.5': expected 'all' or a comma list"},
      {"bench --threads ' 1'", "--threads ' 1': expected 'all' or a comma list"},
      {"bench --threads 2,", "--threads '2,': expected 'all' or a comma list"},
      {"bench --threads 1,99999", "got 99999"},
  };
  for (const Case& c : cases) {
    const auto r = run_cli(c.args);
    CAPTURE(c.args);
    CAPTURE(r.output);
    CHECK(r.status == 2);
    CHECK(contains(r.output, c.message));
    CHECK(contains(r.output, "--help"));  // every usage error points at the help
  }
}

TEST_CASE("cli: a flag missing its value does not take the next flag as its value") {
  TempDir dir("cli_flagvalue");
  // Run inside the temporary directory, so that a wrongly created './--resume' would show there.
  auto r = run_cli("help >/dev/null; cd " + dir.str() + " && " CHARGPT_BINARY " train --out --resume 2>&1; echo status $?; ls -A");
  CHECK(contains(r.output, "status 2"));
  CHECK(contains(r.output, "--out is missing its value (it would take '--resume', one of this command's flags)"));
  CHECK(fs::is_empty(dir.path));
  r = run_cli("sample --prompt --json");
  CHECK(r.status == 2);
  CHECK(contains(r.output, "--prompt is missing its value (it would take '--json'"));
  r = run_cli("sample --prompt -h");
  CHECK(r.status == 2);
  r = run_cli("train --log --steps=3");
  CHECK(r.status == 2);
  CHECK(contains(r.output, "--log is missing its value (it would take '--steps=3'"));
  // A value that merely starts with '-' is still a value.
  r = run_cli("sample --checkpoint /nonexistent/c.safetensors --prompt --hello");
  CHECK(r.status == 1);
  CHECK(contains(r.output, "/nonexistent/c.safetensors"));
}

TEST_CASE("cli: --help lists every option with its default") {
  auto r = run_cli("train --help");
  CHECK(r.status == 0);
  r.output = squeeze(r.output);
  for (const char* s : {"--steps arg total optimizer steps (default: 2000)", "(default: 0.001)",
                        "(default: data/tinyshakespeare.txt)", "(default: checkpoints/shakespeare.safetensors)",
                        "baby (4 layers, 4 heads, 128 wide, block 64, batch 12",
                        "nanogpt (6 layers, 6 heads, 384 wide, block 256, batch 64", "--force", "SIGTERM",
                        "--n-layer arg transformer blocks (default: from the preset)", "(default: 1337)"})
    CHECK_MESSAGE(contains(r.output, s), std::string(s));
  r = run_cli("sample --help");
  CHECK(r.status == 0);
  r.output = squeeze(r.output);
  for (const char* s : {"(default: 500)", "(default: 0.8)", "--no-kv-cache", "--keep", "(default: 1337)"})
    CHECK_MESSAGE(contains(r.output, s), std::string(s));
  r = run_cli("eval --help");
  CHECK(r.status == 0);
  CHECK(contains(r.output, "(default: val)"));
  r = run_cli("bench --help");
  CHECK(r.status == 0);
  r.output = squeeze(r.output);
  for (const char* s : {"(default: all)", "(default: 20)", "--sgemm-size", "--csv", "(default: from the preset)"})
    CHECK_MESSAGE(contains(r.output, s), std::string(s));
}

TEST_CASE("cli: flags override the preset whatever their order") {
  TempDir dir("cli_preset");
  const std::string data = write_corpus(dir);
  const auto r = run_cli("train --n-layer 1 --preset nanogpt --n-embd 12 --batch-size 2 --steps 0 --eval-iters 1"
                         " --threads 1 --data " + data + " --out " + (dir / "p.safetensors"));
  CAPTURE(r.output);
  CHECK(r.status == 0);
  CHECK(contains(r.output, "(L=1 H=6 C=12 T=256 V="));
  CHECK(contains(r.output, "batch 2 = "));
}

TEST_CASE("cli: bench sorts its thread list and reports JSON and CSV") {
  TempDir dir("cli_bench");
  const std::string data = write_corpus(dir);
  const auto r = run_cli("bench --data " + data +
                         " --n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4 --threads 2,1,2 --steps 1"
                         " --warmup 0 --rounds 1 --sgemm-size 32 -q --json --csv " + (dir / "b.csv") + " >" +
                         (dir / "b.json") + " 2>" + (dir / "table.txt") + "; echo status $?");
  CAPTURE(r.output);
  REQUIRE(r.output == "status 0\n");
  std::ifstream json_file(dir / "b.json");
  const auto j = nlohmann::json::parse(json_file);
  REQUIRE(j["rows"].size() == 2);
  CHECK(j["rows"][0]["threads"] == 1);
  CHECK(j["rows"][1]["threads"] == 2);
  CHECK(j["config"]["n_embd"] == 16);
  CHECK(j["amdahl"].contains("valid"));
  CHECK(j["method"]["losses_identical"] == true);
  std::ifstream csv(dir / "b.csv");
  std::string header, line;
  REQUIRE(std::getline(csv, header));
  CHECK(header.rfind("threads,oversubscribed,", 0) == 0);
  int rows = 0;
  while (std::getline(csv, line)) ++rows;
  CHECK(rows == 2);
}

// ---------------------------------------------------------------------------
// Signals, outputs, logs.

namespace {

int checkpoint_step(const std::string& path) {
  chargpt::Metadata meta;
  chargpt::load_model(path, &meta);
  return std::stoi(meta["step"]);
}

}  // namespace

TEST_CASE("cli: SIGTERM saves at the end of the step and exits with 143") {
  TempDir dir("cli_sigterm");
  const std::string data = write_corpus(dir), out = dir / "term.safetensors", log = dir / "log.jsonl";
  std::vector<std::string> args = {CHARGPT_BINARY, "train", "--data", data, "--out", out, "--log", log,
                                   "--log-interval", "1", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                                   "--block-size", "16", "--batch-size", "4", "--steps", "100000000",
                                   "--eval-interval", "0", "--threads", "1"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, (dir / "stdout.txt").c_str(), O_WRONLY | O_CREAT, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, (dir / "stderr.txt").c_str(), O_WRONLY | O_CREAT, 0644);
  pid_t pid;
  REQUIRE(posix_spawn(&pid, CHARGPT_BINARY, &fa, nullptr, argv.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&fa);
  // Training has started (and the handler is installed) once the log has a step line.
  const auto t0 = std::chrono::steady_clock::now();
  while (bytes_of(log).find("\"step\"") == std::string::npos &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  INFO(bytes_of(dir / "stderr.txt"));
  REQUIRE(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 143);
  CHECK(contains(bytes_of(dir / "stderr.txt"), "SIGTERM: finishing this step and saving"));
  const int step = checkpoint_step(out);
  CHECK(step > 0);
  CHECK(step < 100000000);
  CHECK(fs::exists(dir / "term.optim.safetensors"));
  // and the pair resumes
  const auto r = run_cli("train --resume --data " + data + " --out " + out + " --log " + log + kTiny +
                         " --threads 1 --steps " + std::to_string(step + 2));
  CAPTURE(r.output);
  CHECK(r.status == 0);
  CHECK(checkpoint_step(out) == step + 2);
}

TEST_CASE("cli: outputs that are not regular files or are inputs are refused, and nothing is written") {
  TempDir dir("cli_outputs");
  const std::string data = write_corpus(dir), before = bytes_of(data);
  const std::string base = "train --steps 2 --data " + data + kTiny;
  auto refused = [&](const std::string& flags, const std::string& message) {
    const auto r = run_cli(base + flags);
    CAPTURE(flags);
    CAPTURE(r.output);
    CHECK(r.status == 1);
    CHECK(contains(r.output, message));
    CHECK(!contains(r.output, "step 1"));  // refused before training
  };
  refused(" --out /dev/null", "--out '/dev/null' exists and is not a regular file");
  refused(" --out " + (dir / "w.safetensors") + " --log /dev/null", "--log '/dev/null' exists and is not a regular file");
  refused(" --out " + dir.str(), "--out '" + dir.str() + "' exists and is not a regular file");
  CHECK(fs::is_character_file("/dev/null"));
  refused(" --out " + data, "--out '" + data + "' is the same file as the input '" + data + "'");
  refused(" --out " + (dir / "w.safetensors") + " --log " + data, "--log '" + data + "' is the same file as the input");
  fs::create_symlink(data, dir / "link.safetensors");
  refused(" --force --out " + (dir / "link.safetensors"), "is the same file as the input");
  refused(" --out " + (dir / "w.safetensors") + " --log " + (dir / "w.safetensors"),
          "--log '" + (dir / "w.safetensors") + "' is the same file as --out");
  refused(" --out " + (dir / "w.safetensors") + " --log " + (dir / "w.optim.safetensors"),
          "is the same file as the optimizer state beside --out");
  // not writable: the directory would have to be inside a regular file
  refused(" --out " + data + "/sub/w.safetensors", "cannot write --out '" + data + "/sub/w.safetensors'");
  CHECK(bytes_of(data) == before);
  CHECK(!fs::exists(dir / "w.safetensors"));

  const auto r = run_cli("bench --csv /dev/null --data " + data);
  CHECK(r.status == 1);
  CHECK(contains(r.output, "--csv '/dev/null' exists and is not a regular file"));
}

TEST_CASE("cli: an existing checkpoint is replaced only with --force, continued only with --resume") {
  TempDir dir("cli_replace");
  const std::string data = write_corpus(dir), out = dir / "w.safetensors", log = dir / "log.jsonl";
  const std::string base = "train --data " + data + kTiny + " --threads 1 --out " + out + " --log " + log;
  REQUIRE(run_cli(base + " --steps 3").status == 0);
  const std::string weights = bytes_of(out), log_text = bytes_of(log);
  auto r = run_cli(base + " --steps 5");
  CAPTURE(r.output);
  CHECK(r.status == 1);
  CHECK(contains(r.output, "--out '" + out + "' exists; refusing to replace it: --resume continues that run, "
                           "--force starts a new one over it"));
  CHECK(bytes_of(out) == weights);
  CHECK(bytes_of(log) == log_text);
  fs::remove(out);  // the optimizer state and the log are protected as well
  r = run_cli(base + " --steps 5");
  CHECK(r.status == 1);
  CHECK(contains(r.output, "the optimizer state beside --out '" + (dir / "w.optim.safetensors") + "' exists"));
  fs::remove(dir / "w.optim.safetensors");
  r = run_cli(base + " --steps 5");
  CHECK(r.status == 1);
  CHECK(contains(r.output, "--log '" + log + "' exists"));
  r = run_cli(base + " --steps 5 --force");
  CHECK(r.status == 0);
  CHECK(checkpoint_step(out) == 5);
  r = run_cli(base + " --steps 7 --resume");
  CHECK(r.status == 0);
  CHECK(checkpoint_step(out) == 7);
}

TEST_CASE("cli: a failed log write stops the run with an error after saving the checkpoint") {
  TempDir dir("cli_logfail");
  const std::string data = write_corpus(dir), out = dir / "w.safetensors", log = dir / "log.jsonl";
  // A file size limit of 64 KiB (SIGXFSZ ignored, so writes past it fail with EFBIG): the tiny model's
  // checkpoint files stay below it, the log of one line per step outgrows it after a few hundred steps.
  const auto r = run_cli("help >/dev/null; trap '' XFSZ; prlimit --fsize=65536 " CHARGPT_BINARY " train --data " +
                         data + kTiny + " --threads 1 --steps 100000 --log-interval 1 --out " + out + " --log " + log +
                         " 2>&1; echo status $?");
  CAPTURE(r.output);
  CHECK(contains(r.output, "status 1"));
  CHECK(contains(r.output, "cannot write log file '" + log + "': File too large; training stopped after step "));
  const int step = checkpoint_step(out);
  CHECK(step > 0);
  CHECK(step < 100000);
  CHECK(contains(r.output, "step " + std::to_string(step) + ", saved to '" + out + "'"));
}

// ---------------------------------------------------------------------------
// Memory: what a flag would need, refused before it is allocated.

TEST_CASE("cli: the training memory estimate covers what the engine allocates") {
  chargpt::Config cfg;
  cfg.vocab_size = 67;
  cfg.block_size = 24;
  cfg.n_layer = 3;
  cfg.n_head = 3;
  cfg.n_embd = 48;
  for (int n : {1, 3, 7}) {
    const chargpt::Activations acts(cfg, n);
    const double est = chargpt::estimate_activation_bytes(cfg, n);
    CAPTURE(n);
    CHECK(est >= (double)acts.bytes());
    CHECK(est <= 1.02 * (double)acts.bytes() + 4096);
  }
  // A gradient buffer and a pass's activations per shard in flight (min(threads, shards)).
  std::vector<int32_t> split(5000);
  for (size_t i = 0; i < split.size(); ++i) split[i] = (int32_t)(i * 7 % 67);
  for (int threads : {1, 2, 3, 5})
    for (int pass : {0, 1}) {
      CAPTURE(threads);
      CAPTURE(pass);
      chargpt::Engine e(cfg, {.batch_size = 7, .shard_size = 2, .pass_size = pass, .threads = threads, .seed = 1});
      e.train_step(split, 1e-3f, 1.f, chargpt::AdamW{});
      const double est = chargpt::estimate_train_bytes(cfg, 7, 2, threads, 0, pass);
      const double batch = 8.0 * 7 * cfg.block_size;  // the inputs and targets, not in bytes_allocated
      CHECK(est >= (double)e.bytes_allocated() + batch);
      CHECK(est <= (double)e.bytes_allocated() + batch + 0.02 * e.in_flight() * chargpt::estimate_activation_bytes(cfg, 2) + 4096);
    }
  // The arithmetic does not overflow for absurd shapes.
  cfg.n_embd = 2000000000;
  cfg.n_head = 1;
  CHECK(chargpt::estimate_train_bytes(cfg, 2000000000, 0, 0) > 1e20);
}

TEST_CASE("cli: huge shapes and batches are refused with the memory they would need") {
  TempDir dir("cli_memory");
  const std::string data = write_corpus(dir), out = dir / "w.safetensors";
  for (const char* flags : {"--n-embd 1000000", "--batch-size 2000000000", "--n-layer 2000000",
                            "--block-size 256 --batch-size 1000000", "--shard-size 1000000000 --pass-size 1000000000"}) {
    const std::string f = flags;
    const auto r = run_cli("train --threads 1 --data " + data + " --out " + out + " " + f);
    CAPTURE(f);
    CAPTURE(r.output);
    CHECK(r.status == 1);
    CHECK(contains(r.output, "GiB of memory; "));
    CHECK(contains(r.output, ": lower --n-layer, --n-embd, --block-size, --batch-size, --pass-size or --threads"));
    CHECK(!fs::exists(out));
  }
  auto r = run_cli("train --threads 1 --data " + data + " --out " + out + " --n-embd 1000000");
  CHECK(contains(r.output, "training this model (n_layer 4, n_embd 1000000, block_size 64, vocabulary "));
  r = run_cli("bench --threads 1 --data " + data + " --batch-size 2000000000");
  CHECK(r.status == 1);
  CHECK(contains(r.output, "GiB of memory; "));
}

TEST_CASE("cli: --tokens beyond the virtual-memory limit is refused with the memory it would need") {
  // The limit comes from ulimit -v here, since this machine has enough for any int.
  if (chargpt::test::kUnderShadowMemorySanitizer)
    CHARGPT_SKIP("needs a virtual-memory limit, which an ASan or TSan build cannot run under");
  TempDir dir("cli_tokens");
  const std::string data = write_corpus(dir), out = dir / "w.safetensors";
  REQUIRE(run_cli("train --steps 1 --threads 1 --data " + data + kTiny + " --out " + out).status == 0);
  const auto r = run_cli("help >/dev/null; prlimit --as=4294967296 " CHARGPT_BINARY " sample --checkpoint " + out +
                         " --tokens 2000000000 --json 2>&1; echo status $?");
  CAPTURE(r.output);
  CHECK(contains(r.output, "status 1"));
  CHECK(contains(r.output, "--tokens 2000000000 would need 14.9 GiB of memory; this process may use (ulimit -v) "
                           "4.0 GiB: lower --tokens"));
}

// ---------------------------------------------------------------------------
// Threads that cannot be started.

TEST_CASE("cli: threads that cannot be started are an error message and exit 1, not an abort") {
  // RLIMIT_NPROC caps the threads of the real user; root is exempt, so as root the command runs as nobody.
  const bool root = ::geteuid() == 0;
  if (run_cli("help >/dev/null; command -v prlimit && command -v setpriv").status != 0)
    CHARGPT_SKIP("prlimit or setpriv (util-linux) is not installed");
  TempDir dir("cli_nproc");
  fs::permissions(dir.path, fs::perms::all);  // writable for nobody
  const std::string data = write_corpus(dir);
  const std::string as_user = root ? "setpriv --reuid=65534 --regid=65534 --clear-groups " : "";
  if (run_cli("help >/dev/null; " + as_user + CHARGPT_BINARY " --help >/dev/null").status != 0)
    CHARGPT_SKIP("the binary cannot be run as nobody here (directory permissions)");
  // Three threads for the user: this process and two more, while 8 are asked for.
  for (const std::string& cmd : {"train --steps 2 --out " + (dir / "w.safetensors") + " --data " + data + kTiny,
                                "bench --steps 1 --warmup 0 --rounds 1 --data " + data})
  {
    const auto r = run_cli("help >/dev/null; " + as_user + "prlimit --nproc=3 " CHARGPT_BINARY " " + cmd +
                           " --threads 8 2>&1; echo status $?");
    CAPTURE(cmd);
    CAPTURE(r.output);
    CHECK(contains(r.output, "status 1"));
    const int started = 3 - chargpt::test::kSanitizerRuntimeThreads;
    CHECK(contains(r.output, "cannot start 8 threads (" + std::to_string(started) +
                                 " started, then: Resource temporarily unavailable)"));
    CHECK(contains(r.output, "lower --threads or raise the limit"));
    CHECK(!contains(r.output, "terminate called"));
  }
}

TEST_CASE("cli: info and --version print the build, the backends and the CPU") {
  const auto r = run_cli("info");
  CHECK(r.status == 0);
  CHECK(r.output.rfind("chargpt ", 0) == 0);
  for (const char* line : {"\ncompiler: ", "\nonetbb: ", "\ncpu: ", "\nbackends: openblas", "\nblas: OpenBLAS",
                           "\nonednn: ", "\ncuda: ", "\nmpi: "})
    CHECK_MESSAGE(r.output.find(line) != std::string::npos, line);
  const auto v = run_cli("--version");
  CHECK(v.status == 0);
  CHECK(v.output == r.output);
  const auto bad = run_cli("info --bogus");
  CHECK(bad.status == 2);
  CHECK(bad.output.find("unexpected argument '--bogus'") != std::string::npos);
}
