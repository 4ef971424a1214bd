// chargpt sample: generate text from a checkpoint, streaming it to stdout.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include <unistd.h>

#include <cxxopts.hpp>

#include "chargpt/checkpoint.h"
#include "chargpt/cli.h"
#include "chargpt/data.h"
#include "chargpt/sample.h"
#include "chargpt/tokenizer.h"
#include "chargpt/train.h"

namespace chargpt {

namespace {

void write_out(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

std::string fmt(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", (double)v);
  return buf;
}

}  // namespace

int cmd_sample(int argc, char** argv) {
  cxxopts::Options o("chargpt sample",
                     "Generate text from a checkpoint with a KV cache, streaming it to stdout (prompt first). "
                     "Past block_size the model sees a sliding window: when it is full, the next token starts a "
                     "new window of the last --keep tokens (its cache rebuilt by one prefill). Same checkpoint, "
                     "prompt, flags and seed give the same text for every --threads value.");
  o.add_options()
      ("checkpoint", "model to sample from", cxxopts::value<std::string>()->default_value(TrainOptions{}.out_path))
      ("prompt", "text to start from (default: a newline)", cxxopts::value<std::string>())
      ("prompt-file", "read the prompt from this UTF-8 file", cxxopts::value<std::string>())
      ("tokens", "characters to generate", cxxopts::value<int>()->default_value("500"))
      ("temperature", "softmax temperature; 0 = greedy (argmax)", cxxopts::value<float>()->default_value("0.8"))
      ("top-k", "sample only from the k most likely characters (0 = off)", cxxopts::value<int>()->default_value("0"))
      ("top-p", "nucleus sampling: only the smallest set of most likely characters whose probability reaches p "
                "(1 = off)", cxxopts::value<float>()->default_value("1.0"))
      ("seed", "random seed", cxxopts::value<uint64_t>()->default_value("1337"))
      ("threads", "worker threads (0 = all hardware threads)", cxxopts::value<int>()->default_value("0"))
      ("keep", "tokens a new context window starts with when the window slides (0 = block_size/2; "
               "block_size = nanoGPT's crop, a whole-window forward every token past block_size)",
       cxxopts::value<int>()->default_value("0"))
      ("no-kv-cache", "recompute the whole context window with the batched forward for every token (baseline)")
      ("json", "print one JSON object at the end (text and timings) instead of streaming")
      ("h,help", "show this help");
  add_backend_options(o);
  const cxxopts::ParseResult r = parse_options(o, argc, argv);
  if (wants_help(o, r)) return 0;

  // Flag checks that need no checkpoint come first.
  const int tokens = r["tokens"].as<int>();
  const float temperature = r["temperature"].as<float>();
  const int top_k = r["top-k"].as<int>();
  const float top_p = r["top-p"].as<float>();
  const int threads = r["threads"].as<int>();
  const int keep = r["keep"].as<int>();
  if (tokens < 0) throw UsageError("--tokens must be >= 0, got " + std::to_string(tokens));
  if (!(std::isfinite(temperature) && temperature >= 0.f))
    throw UsageError("--temperature must be a finite number >= 0, got " + fmt(temperature));
  if (top_k < 0) throw UsageError("--top-k must be >= 0 (0 = off), got " + std::to_string(top_k));
  if (!(top_p > 0.f && top_p <= 1.f))
    throw UsageError("--top-p must be in (0, 1], got " + fmt(top_p));
  if (threads < 0) throw UsageError("--threads must be >= 0, got " + std::to_string(threads));
  if (keep < 0) throw UsageError("--keep must be >= 0, got " + std::to_string(keep));
  if (r.count("prompt") && r.count("prompt-file")) throw UsageError("--prompt and --prompt-file cannot be used together");

  // The prompt's text, before the (slow) checkpoint load, so its problems show at once.
  // A bad prompt file is a runtime error (exit 1), a bad --prompt a usage error (exit 2).
  const bool from_file = r.count("prompt-file") > 0;
  const std::string prompt_file = from_file ? r["prompt-file"].as<std::string>() : "";
  const std::string where = from_file ? "prompt file '" + prompt_file + "'" : "--prompt";
  auto fail = [from_file](const std::string& msg) {
    if (from_file) throw std::runtime_error(msg);
    throw UsageError(msg);
  };
  const std::string bytes =
      from_file ? read_file(prompt_file) : (r.count("prompt") ? r["prompt"].as<std::string>() : "\n");
  std::u32string prompt_cps;
  try {
    prompt_cps = utf8_decode(bytes);
  } catch (const std::exception& e) {
    fail(where + ": " + e.what());
  }
  if (prompt_cps.empty()) fail(from_file ? "prompt is empty (" + where + ")" : "prompt is empty");

  const std::string ckpt = r["checkpoint"].as<std::string>();
  Model m = load_model(ckpt);
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

  Sampler sampler(temperature, top_k, top_p, r["seed"].as<uint64_t>());
  GenerateOptions g;
  g.max_new_tokens = tokens;
  g.kv_cache = r.count("no-kv-cache") == 0;
  g.threads = threads;
  g.keep = keep;
  std::unique_ptr<Backend> be = make_backend(read_backend_options(r));
  be->bind_weights(m.params.data(), m.params.size());
  be->weights_changed(0, m.params.size());
  g.backend = be.get();
  const bool json_out = r.count("json") > 0;

  std::string text = utf8_encode(prompt_cps);
  if (!json_out) write_out(text);
  GenerateStats st;
  generate(cfg, m.params.data(), prompt, sampler, g,
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
                 "peak memory %.1f MiB\n",
                 st.new_tokens, st.seconds, tok_s, ms_tok, g.kv_cache ? "KV cache" : "no KV cache", st.threads,
                 st.threads == 1 ? "" : "s", rss_mb);
  }
  return 0;
}

}  // namespace chargpt
