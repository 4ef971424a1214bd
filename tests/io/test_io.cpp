// Tokenizer, dataset split, safetensors checkpoints.
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "io/data.h"
#include "model/model.h"
#include "io/tokenizer.h"
#include "support.h"

using namespace chargpt;
using chargpt::test::error_of;
namespace fs = std::filesystem;

TEST_CASE("tokenizer: UTF-8 round trip over code points") {
  const std::string text = "Hark! héllo ☃ 𝄞\nO Romeo";
  const auto cps = utf8_decode(text);
  CHECK(cps.size() == 23);  // 𝄞 is one code point (4 bytes), ☃ one (3), é one (2)
  const Tokenizer tok = Tokenizer::from_text(cps);
  CHECK(std::is_sorted(tok.vocab.begin(), tok.vocab.end()));
  CHECK(tok.vocab.front() == U'\n');
  CHECK(tok.vocab.back() == U'𝄞');
  const auto ids = tok.encode(cps);
  CHECK(ids.size() == cps.size());
  CHECK(tok.decode(ids) == text);
  CHECK(tok.find(U'☃') >= 0);
  CHECK(tok.find(U'z') == -1);
}

TEST_CASE("tokenizer: characters outside the vocabulary are named") {
  const Tokenizer tok = Tokenizer::from_text(utf8_decode("abc"));
  const std::string err = error_of([&] { tok.encode(utf8_decode("abzx☃z")); });
  CHECK(err.find("characters not in the vocabulary") != std::string::npos);
  CHECK(err.find("'z' (U+007A)") != std::string::npos);
  CHECK(err.find("'x' (U+0078)") != std::string::npos);
  CHECK(err.find("U+2603") != std::string::npos);
  CHECK(err.find("'z' (U+007A), 'x'") != std::string::npos);  // each listed once, in order of appearance
}

TEST_CASE("tokenizer: invalid UTF-8 is rejected with its byte offset") {
  CHECK(error_of([] { utf8_decode("ab\xff"); }).find("byte 2") != std::string::npos);
  CHECK(error_of([] { utf8_decode("a\xc3"); }).find("truncated") != std::string::npos);
  CHECK(error_of([] { utf8_decode("\xc0\xaf"); }).find("overlong") != std::string::npos);
  CHECK(error_of([] { utf8_decode("\xed\xa0\x80"); }).find("not a Unicode scalar") != std::string::npos);
}

TEST_CASE("data: 90/10 split and deterministic batches") {
  std::string text;
  for (int i = 0; i < 1001; ++i) text += (char)('a' + i % 7);
  const Dataset d = make_dataset(text);
  CHECK(d.tok.size() == 7);
  CHECK(d.train.size() == 900);  // floor(0.9 * 1001)
  CHECK(d.val.size() == 101);
  CHECK(d.train[0] == 0);
  CHECK(d.val[0] == 900 % 7);
  const int B = 5, T = 8;
  std::vector<int32_t> x1(B * T), y1(B * T), x2(B * T), y2(B * T);
  Rng r1(42), r2(42);
  sample_batch(d.train, B, T, r1, x1.data(), y1.data());
  sample_batch(d.train, B, T, r2, x2.data(), y2.data());
  CHECK(x1 == x2);
  CHECK(y1 == y2);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t + 1 < T; ++t) CHECK(y1[b * T + t] == x1[b * T + t + 1]);  // targets are inputs shifted by one
  std::vector<int32_t> tiny(T);
  CHECK(error_of([&] { sample_batch(tiny, 1, T, r1, x1.data(), y1.data()); }).find("fewer than block_size+1") !=
        std::string::npos);
}

TEST_CASE("data: Tiny Shakespeare has 65 symbols and the documented split") {
  INFO("needs data/tinyshakespeare.txt: run scripts/fetch_data.sh");
  REQUIRE(fs::exists(CHARGPT_DATA_FILE));
  const Dataset d = load_dataset(CHARGPT_DATA_FILE);
  CHECK(d.tok.size() == 65);
  CHECK(d.train.size() + d.val.size() == 1115394);
  CHECK(d.train.size() == 1003854);  // floor(0.9 * 1115394)
  CHECK(d.val.size() == 111540);
  CHECK(utf8_encode(d.tok.vocab).substr(0, 3) == "\n !");
}

TEST_CASE("checkpoint: save and load round trip is bit-identical") {
  Config cfg;
  cfg.vocab_size = 5;
  cfg.block_size = 8;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 4;
  const Tokenizer tok = Tokenizer::from_text(utf8_decode("ab\né☃"));
  FloatBuffer p(num_params(cfg));
  init_params(cfg, p.data(), 3);
  p[7] = -0.0f;  // bit patterns survive, signed zero included
  const test::TempDir dir("io");
  const std::string path = dir / "rt.safetensors";
  save_model(path, cfg, tok, p.data(), {{"step", "17"}});
  CHECK_FALSE(fs::exists(path + ".tmp"));
  Metadata meta;
  const Model m = load_model(path, &meta);
  CHECK(m.cfg == cfg);
  CHECK(m.tok.vocab == tok.vocab);
  REQUIRE(m.params.size() == p.size());
  CHECK(std::memcmp(m.params.data(), p.data(), p.size() * sizeof(float)) == 0);
  CHECK(meta["step"] == "17");
  CHECK(meta["format"] == "chargpt");
  CHECK(meta["version"] == "1");

  // Python-free check of the file layout: u64 header length, JSON header, F32 data.
  std::ifstream f(path, std::ios::binary);
  uint64_t hlen = 0;
  f.read(reinterpret_cast<char*>(&hlen), 8);
  std::string header(hlen, '\0');
  f.read(header.data(), (std::streamsize)hlen);
  const auto j = nlohmann::json::parse(header);
  const auto specs = param_specs(cfg);
  CHECK(j.size() == specs.size() + 1);  // + __metadata__
  size_t expect_offset = 0;
  for (const auto& s : specs) {
    CAPTURE(s.name);
    REQUIRE(j.contains(s.name));
    CHECK(j[s.name]["dtype"] == "F32");
    CHECK(j[s.name]["shape"].get<std::vector<int64_t>>() == s.shape);
    CHECK(j[s.name]["data_offsets"][0].get<size_t>() == expect_offset);  // contiguous
    expect_offset += s.numel * 4;
    CHECK(j[s.name]["data_offsets"][1].get<size_t>() == expect_offset);
  }
  CHECK(j.contains("transformer.h.1.mlp.c_proj.bias"));
  CHECK_FALSE(j.contains("lm_head.weight"));  // tied, not stored
  CHECK(fs::file_size(path) == 8 + hlen + expect_offset);
  const auto config = nlohmann::json::parse(j["__metadata__"]["config"].get<std::string>());
  CHECK(config["n_layer"] == 2);
  CHECK(config["n_head"] == 2);
  CHECK(config["n_embd"] == 4);
  CHECK(config["block_size"] == 8);
  CHECK(config["vocab_size"] == 5);
  CHECK(j["__metadata__"]["vocab"] == "\nabé☃");
}

TEST_CASE("checkpoint: bad files give one clear error naming the file") {
  const test::TempDir dir("io");
  const std::string missing = dir / "missing.safetensors";
  CHECK(error_of([&] { load_model(missing); }) == "checkpoint '" + missing + "' does not exist");
  const std::string junk = dir / "junk.safetensors";
  std::ofstream(junk) << "hello";
  CHECK(error_of([&] { load_model(junk); }).find("'" + junk + "' is not a valid safetensors file") == 0);
  const std::string other = dir / "other.safetensors";
  float x = 1.f;
  write_safetensors(other, {{"w", {1}, &x}}, {{"format", "pt"}});
  CHECK(error_of([&] { load_model(other); }).find("is not a chargpt checkpoint") != std::string::npos);
}
