#pragma once
// What the test files share: skipping a case that cannot run here, temporary
// directories, running the chargpt binary, file bytes and hand-edited
// safetensors files, random values, the tiny model and the made-up corpora.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "base/rng.h"
#include "io/checkpoint.h"
#include "io/tokenizer.h"
#include "model/model.h"
#include "train/train.h"

namespace chargpt::test {

// ---------------------------------------------------------------- skipping a case
// A case that cannot run on this machine (no AMX, no GPU, no tmpfs) calls CHARGPT_SKIP("why")
// before its first assertion. tests/main.cpp prints "SKIPPED: why" when the case ends and exits
// with kSkipExitCode, which CTest reports as a skip (SKIP_RETURN_CODE). A case that skips after
// an assertion passed fails the run instead: the part that runs here belongs in a case of its own.
inline constexpr int kSkipExitCode = 77;

// Why the running case skipped; empty while it has not.
inline std::string& skip_reason() {
  static std::string why;
  return why;
}
inline void mark_skipped(const std::string& why) { skip_reason() = why.empty() ? "(no reason given)" : why; }

#define CHARGPT_SKIP(why)                 \
  do {                                    \
    ::chargpt::test::mark_skipped(why);   \
    return;                               \
  } while (0)

// AddressSanitizer and ThreadSanitizer reserve terabytes of address space for their shadow
// memory, so a child run under a virtual-memory limit (prlimit --as, ulimit -v) cannot start.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kUnderShadowMemorySanitizer = true;
#else
inline constexpr bool kUnderShadowMemorySanitizer = false;
#endif
// Threads a sanitizer's runtime starts in every process (ThreadSanitizer's background thread).
#if defined(__SANITIZE_THREAD__)
inline constexpr int kSanitizerRuntimeThreads = 1;
#else
inline constexpr int kSanitizerRuntimeThreads = 0;
#endif

// max_i |got_i - want_i| / (tol·S_i) of a product against its double reference, S_i the
// sum of the magnitudes that went into element i: <= 1 passes; a NaN fails.
inline double worst(const std::vector<float>& got, const std::vector<double>& want, const std::vector<double>& S,
                    double tol) {
  REQUIRE(got.size() == want.size());
  double w = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs((double)got[i] - want[i]) / (tol * S[i] + 1e-300);
    w = std::max(w, std::isnan(e) ? std::numeric_limits<double>::infinity() : e);
  }
  return w;
}

// ---------------------------------------------------------------- files and commands

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

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// The message f() throws, "" if it returns.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// The whole file's bytes ("" if it cannot be read).
inline std::string bytes_of(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

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

// Runs the chargpt binary under test with a shell argument string; stdout and stderr
// are captured together. timeout_s > 0: killed after that long (a hang fails, not hangs).
inline RunResult run_cli(const std::string& args, int timeout_s = 0) {
  const std::string limit = timeout_s > 0 ? "timeout " + std::to_string(timeout_s) + " " : "";
  return run_shell(limit + std::string(CHARGPT_BINARY) + " " + args);
}

struct SeparateRunResult {
  int status;  // exit code, or 128 + signal
  std::string out, err;
};

// run_cli with stdout and stderr captured apart.
inline SeparateRunResult run_cli_apart(const std::string& args) {
  const TempDir dir("cli");
  const std::string o = dir / "stdout", e = dir / "stderr";
  const RunResult r = run_shell(std::string(CHARGPT_BINARY) + " " + args + " >'" + o + "' 2>'" + e + "'");
  return {r.status, bytes_of(o), bytes_of(e)};
}

inline size_t peak_rss_now() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return (size_t)ru.ru_maxrss * 1024;
}

// ---------------------------------------------------------------- safetensors by hand

// A safetensors file from a header and the data bytes after it, as any tool could write it.
inline void write_raw_safetensors(const std::string& path, const nlohmann::json& header, const std::string& data) {
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  const uint64_t n = h.size();
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &n, 8);
  spit(path, bytes + h + data);
}

// Rewrites the header of a safetensors file through `edit`, keeping its data.
// The header checksum goes: the edited file stands for one edited by hand or written by another
// tool, so that the checks behind the checksum are what the tests reach.
inline void edit_header(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
  const std::string bytes = bytes_of(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  header["__metadata__"].erase(chargpt::kHeaderChecksumKey);
  edit(header);
  write_raw_safetensors(path, header, bytes.substr(8 + n));
}

// Edits one key of the JSON object stored as the string metadata "config".
inline void edit_config(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
  edit_header(path, [&](nlohmann::json& h) {
    nlohmann::json c = nlohmann::json::parse(h["__metadata__"]["config"].get<std::string>());
    edit(c);
    h["__metadata__"]["config"] = c.dump();
  });
}

// ---------------------------------------------------------------- random values

// n normal values, mean offset, standard deviation scale.
inline std::vector<float> randn(Rng& rng, size_t n, double scale = 1.0, double offset = 0.0) {
  std::vector<float> v(n);
  for (auto& x : v) x = (float)(offset + scale * rng.normal());
  return v;
}

// n values uniform in [-1, 1).
inline std::vector<float> random_vec(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = 2.f * rng.uniform() - 1.f;
  return v;
}

// n tokens uniform in [0, vocab).
inline std::vector<int32_t> random_tokens(Rng& rng, size_t n, int vocab) {
  std::vector<int32_t> v(n);
  for (auto& x : v) x = (int32_t)rng.below((uint64_t)vocab);
  return v;
}
inline std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  Rng rng(seed);
  return random_tokens(rng, n, vocab);
}

// Parameters far from nanoGPT's init (layer-norm weights around 1, everything else around 0,
// spread sd): attention is far from uniform and every gradient is sizable.
inline void random_params(const Config& cfg, float* p, uint64_t seed, double sd) {
  Rng rng(seed);
  for (const auto& s : param_specs(cfg)) {
    const bool ln_w = s.name.find(".ln_") != std::string::npos && s.name.ends_with(".weight");
    for (size_t i = 0; i < s.numel; ++i) p[s.offset + i] = (float)((ln_w ? 1.0 : 0.0) + sd * rng.normal());
  }
}
inline std::vector<float> random_params(const Config& cfg, uint64_t seed, double sd) {
  std::vector<float> p(num_params(cfg));
  random_params(cfg, p.data(), seed, sd);
  return p;
}

// ---------------------------------------------------------------- the tiny model and corpora

// The OpenBLAS fp32 backend, for the tests that run the model on the reference path
// (it reads the host weights: nothing to bind).
inline Backend& openblas_backend() {
  static const std::unique_ptr<Backend> be = make_backend();
  return *be;
}

// The unit tests' model: 2 layers, 2 heads, n_embd 8, context 8; fast enough for numerical gradients.
inline Config tiny_config(int vocab_size = 5) {
  return Config{.vocab_size = vocab_size, .block_size = 8, .n_layer = 2, .n_head = 2, .n_embd = 8};
}

inline const char* kTinyVocab = "ab\n\xc3\xa9\xe2\x98\x83";  // a b \n é ☃

// A text over the tiny vocabulary, long enough to evaluate the tiny model on.
inline std::string tiny_text() {
  std::string t;
  Rng rng(3);
  const char* pieces[] = {"a", "b", "\n", "\xc3\xa9", "\xe2\x98\x83"};
  for (int i = 0; i < 400; ++i) t += pieces[rng.below(5)];
  return t;
}

// Saves the tiny model (init from `seed`, with `poke` applied) to path.
inline void save_tiny(const std::string& path, uint64_t seed = 3, const std::function<void(float*)>& poke = nullptr) {
  const Config cfg = tiny_config();
  FloatBuffer p(num_params(cfg));
  init_params(cfg, p.data(), seed);
  if (poke) poke(p.data());
  save_model(path, cfg, Tokenizer::from_text(utf8_decode(kTinyVocab)), p.data());
}

// A made-up corpus of words for training runs (4000 words: about 18k characters, 18 symbols).
inline std::string word_corpus(uint64_t seed = 5, int words = 4000) {
  std::string s;
  Rng rng(seed);
  const char* w[] = {"to", "be", "or", "not", "the", "king", "shall", "love", "thee", "and", "night"};
  for (int i = 0; i < words; ++i) {
    s += w[rng.below(11)];
    s += rng.below(9) == 0 ? ".\n" : " ";
  }
  return s;
}

// word_corpus(seed, words) written to dir/corpus<seed>_<words>.txt; returns the path.
inline std::string write_corpus(const TempDir& dir, uint64_t seed = 5, int words = 4000) {
  const std::string path = dir / ("corpus" + std::to_string(seed) + "_" + std::to_string(words) + ".txt");
  spit(path, word_corpus(seed, words));
  return path;
}

// The tiny training run of the save tests (also the CLI flags that give it).
inline TrainOptions tiny_run(const std::string& data, const std::string& out) {
  TrainOptions o;
  o.data_path = data;
  o.out_path = out;
  o.model.n_layer = 1;
  o.model.n_head = 2;
  o.model.n_embd = 16;
  o.model.block_size = 16;
  o.batch_size = 4;
  o.steps = 3;
  o.warmup = 2;
  o.lr_decay_steps = 1000;
  o.eval_interval = 0;
  o.eval_iters = 1;
  o.quiet = true;
  o.threads = 1;
  return o;
}
// The shape of a tiny CLI run, without a schedule: eval only at the end, over one batch.
inline const std::string kTinyShapeFlags =
    " --n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4 --eval-interval 0 --eval-iters 1 ";

inline const char* kTinyRunFlags =
    "--n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4 --warmup 2 --lr-decay-steps 1000 "
    "--eval-interval 0 --eval-iters 1 --threads 1";

}  // namespace chargpt::test
