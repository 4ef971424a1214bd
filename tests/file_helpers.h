#pragma once
// What the file-robustness tests share: raw file bytes, editing a safetensors
// header in place of a hostile tool, a tiny checkpoint and a tiny training run.
#include <sys/resource.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "io/checkpoint.h"
#include "model/model.h"
#include "base/rng.h"
#include "io/tokenizer.h"
#include "train/train.h"

namespace chargpt::test {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

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
  const std::string bytes = slurp(path);
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

inline Config tiny_config() {
  Config cfg;
  cfg.vocab_size = 5;
  cfg.block_size = 8;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 8;
  return cfg;
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
inline void save_tiny(const std::string& path, uint64_t seed = 3,
                      const std::function<void(float*)>& poke = nullptr) {
  const Config cfg = tiny_config();
  FloatBuffer p(num_params(cfg));
  init_params(cfg, p.data(), seed);
  if (poke) poke(p.data());
  save_model(path, cfg, Tokenizer::from_text(utf8_decode(kTinyVocab)), p.data());
}

// A made-up corpus of words for training runs.
inline std::string word_corpus(uint64_t seed = 5, int words = 4000) {
  std::string s;
  Rng rng(seed);
  const char* w[] = {"to", "be", "or", "not", "the", "king", "shall", "love", "thee", "and", "night"};
  for (int i = 0; i < words; ++i) s += std::string(w[rng.below(11)]) + (rng.below(9) == 0 ? ".\n" : " ");
  return s;
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
inline const char* kTinyRunFlags =
    "--n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4 --warmup 2 --lr-decay-steps 1000 "
    "--eval-interval 0 --eval-iters 1 --threads 1";

inline size_t peak_rss_now() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return (size_t)ru.ru_maxrss * 1024;
}

}  // namespace chargpt::test
