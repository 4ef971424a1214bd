// chargpt sample: generate text from a checkpoint, streaming it to stdout.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include <unistd.h>

#include <cxxopts.hpp>

#include "io/checkpoint.h"
#include "io/data.h"
#include "engine/memory.h"
#include "sample/generate.h"
#include "io/tokenizer.h"
#include "train/train.h"
#include "cli/cli.h"

namespace chargpt {

namespace {

void write_out(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

struct SampleArgs {
  std::string checkpoint = kDefaultCheckpointPath;
  std::optional<std::string> prompt, prompt_file;
  Sampler sampler;    // temperature, top-k, top-p
  uint64_t seed = kDefaultSeed;
  GenerateOptions g;  // tokens, threads, keep
  BackendArgs backend;
  bool no_kv_cache = false, json = false, help = false;

  template <class V>
  void for_each(V&& v) {
    v(checkpoint, "checkpoint", "model to sample from");
    v(prompt, "prompt", "text to start from (default: a newline)");
    v(prompt_file, "prompt-file", "read the prompt from this UTF-8 file");
    v(g.max_new_tokens, "tokens", "characters to generate", at_least(0));
    v(sampler.temperature, "temperature", "softmax temperature; 0 = greedy (argmax)", at_least(0));
    v(sampler.top_k, "top-k", "sample only from the k most likely characters (0 = off)", at_least(0));
    v(sampler.top_p, "top-p",
      "nucleus sampling: only the smallest set of most likely characters whose probability reaches p (1 = off)",
      between(0, 1, true, false));
    v(seed, "seed", "random seed");
    v(g.threads, "threads", kThreadsHelp, kThreadLimits);
    v(g.keep, "keep",
      "tokens a new context window starts with when the window slides (0 = block_size/2; block_size = nanoGPT's "
      "crop, a whole-window forward every token past block_size)",
      at_least(0));
    v(no_kv_cache, "no-kv-cache", "recompute the whole context window with the batched forward for every token (baseline)");
    v(json, "json", "print one JSON object at the end (text and timings) instead of streaming");
    backend.for_each(v);
    v(help, "h,help", "show this help");
  }
  void check() const {
    if (prompt && prompt_file) throw UsageError("--prompt and --prompt-file cannot be used together");
  }
};

}  // namespace

int cmd_sample(int argc, char** argv) {
  cxxopts::Options o("chargpt sample",
                     "Generate text from a checkpoint with a KV cache, streaming it to stdout (prompt first). "
                     "Past block_size the model sees a sliding window: when it is full, the next token starts a "
                     "new window of the last --keep tokens (its cache rebuilt by one prefill). Same checkpoint, "
                     "prompt, flags and seed give the same text for every --threads value.");
  SampleArgs a;
  if (!parse_args(a, o, argc, argv)) return 0;
  GenerateOptions& g = a.g;
  g.kv_cache = !a.no_kv_cache;
  const BackendOptions bo = a.backend.resolve();
  const int top_k = a.sampler.top_k, keep = g.keep;

  // The prompt's text, before the (slow) checkpoint load, so its problems show at once.
  // A bad prompt file is a runtime error (exit 1), a bad --prompt a usage error (exit 2).
  const bool from_file = a.prompt_file.has_value();
  const std::string prompt_file = a.prompt_file.value_or("");
  const std::string where = from_file ? "prompt file '" + prompt_file + "'" : "--prompt";
  auto fail = [from_file](const std::string& msg) {
    if (from_file) throw std::runtime_error(msg);
    throw UsageError(msg);
  };
  const std::string bytes =
      from_file ? read_file(prompt_file) : a.prompt.value_or("\n");
  std::u32string prompt_cps;
  try {
    prompt_cps = utf8_decode(bytes);
  } catch (const std::exception& e) {
    fail(where + ": " + e.what());
  }
  if (prompt_cps.empty()) fail(from_file ? "prompt is empty (" + where + ")" : "prompt is empty");

  check_threads_can_start(g.threads);
  const std::string& ckpt = a.checkpoint;
  Model m = load_model(ckpt);
  if (const std::string note = unverified_note(ckpt, m); !note.empty()) std::fprintf(stderr, "%s\n", note.c_str());
  const Config& cfg = m.cfg;
  if (top_k > cfg.vocab_size)
    throw UsageError("--top-k " + std::to_string(top_k) + " is larger than the vocabulary (" +
                     std::to_string(cfg.vocab_size) + " characters in '" + ckpt + "')");
  if (keep > cfg.block_size)
    throw UsageError("--keep " + std::to_string(keep) + " is larger than the block size (" +
                     std::to_string(cfg.block_size) + " in '" + ckpt + "')");
  std::vector<int32_t> prompt;
  try {
    prompt = m.tok.encode(prompt_cps);
  } catch (const std::exception& e) {
    fail(where + ": " + e.what() + " (the vocabulary of '" + ckpt + "')");
  }

  // The token sequence is reserved whole, and --json keeps the text (up to 4 bytes a character).
  check_memory_need("--tokens " + std::to_string(g.max_new_tokens),
                    4.0 * ((double)prompt.size() + g.max_new_tokens) + (a.json ? 4.0 * g.max_new_tokens : 0.0) +
                        4.0 * m.params.size(),
                    "lower --tokens");
  Sampler sampler(a.sampler.temperature, top_k, a.sampler.top_p, a.seed);
  const std::unique_ptr<Backend> backend = make_bound_backend(bo, m.cfg, m.params.data());
  const bool json_out = a.json;

  std::string text = utf8_encode(prompt_cps);
  if (!json_out) write_out(text);
  GenerateStats st;
  generate(*backend, cfg, m.params.data(), prompt, sampler, g,
           [&](int32_t id) {
             const std::string s = m.tok.decode(id);
             if (json_out) text += s;
             else write_out(s);
           },
           &st);

  const double tok_s = st.seconds > 0 ? st.new_tokens / st.seconds : 0;
  const double ms_tok = st.new_tokens > 0 ? 1000.0 * st.seconds / st.new_tokens : 0;
  const double rss_mb = peak_rss_bytes() / 1048576.0;
  if (json_out) {
    nlohmann::json j{{"checkpoint", ckpt},
                     {"kv_cache", g.kv_cache},
                     {"threads", st.threads},
                     {"prompt_tokens", st.prompt_tokens},
                     {"new_tokens", st.new_tokens},
                     {"window_rebuilds", st.rebuilds},
                     {"seconds", st.seconds},
                     {"prefill_ms", 1000 * st.prefill_s},
                     {"tokens_per_s", tok_s},
                     {"ms_per_token", ms_tok},
                     {"peak_rss_mb", rss_mb},
                     {"text", text}};
    std::cout << j.dump() << "\n" << std::flush;
  } else {
    if (isatty(STDOUT_FILENO)) write_out("\n");  // a terminal gets its prompt back on a new line
    std::fprintf(stderr, "chargpt sample: %d tokens in %.3fs, %.0f tokens/s (%.3f ms/token), %s, %d thread%s, "
                 "products: %s, peak memory %.1f MiB\n",
                 st.new_tokens, st.seconds, tok_s, ms_tok, g.kv_cache ? "KV cache" : "no KV cache", st.threads,
                 st.threads == 1 ? "" : "s", backend_choice_text(bo).c_str(), rss_mb);
  }
  return 0;
}

}  // namespace chargpt
