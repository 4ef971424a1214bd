// Hostile files: crafted checkpoints, devices and FIFOs, corruption, non-finite
// weights, and the messages for mistakes in metadata and data.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "io/train_state.h"
#include "io/data.h"
#include "base/hash.h"
#include "io/tokenizer.h"
#include "support.h"

using namespace chargpt;
using namespace chargpt::test;
using json = nlohmann::json;
namespace fs = std::filesystem;

TEST_CASE("files: a config whose parameter count overflows is refused before anything is allocated") {
  TempDir dir("files");
  // n_embd 2^31-1 makes 12*C*C overflow 64 bits; the old loader wrapped the
  // element count and copied whole tensors into the small buffer.
  Config small;
  small.n_layer = 1;
  small.n_head = 1;
  small.n_embd = 1;
  small.block_size = 8;
  small.vocab_size = 2;
  json h;
  h["__metadata__"] = {{"format", "chargpt"},
                       {"version", "1"},
                       {"vocab", "ab"},
                       {"config", json{{"n_layer", 1}, {"n_head", 1}, {"n_embd", 2147483647}, {"block_size", 8},
                                       {"vocab_size", 2}}
                                      .dump()}};
  size_t off = 0;
  std::string data;
  for (const auto& s : param_specs(small)) {
    h[s.name] = {{"dtype", "F32"}, {"shape", s.shape}, {"data_offsets", {off, off + s.numel * 4}}};
    off += s.numel * 4;
  }
  data.assign(off, '\0');
  const std::string path = dir / "wrap.safetensors";
  write_raw_safetensors(path, h, data);
  const std::string err = error_of([&] { load_model(path); });
  CHECK(contains(err, "'" + path + "' does not match its own config"));
  CHECK(contains(err, "its parameter count overflows"));

  // A shape whose byte count overflows is refused by the reader itself.
  json t;
  t["w"] = {{"dtype", "F32"}, {"shape", {4294967296LL, 4294967296LL}}, {"data_offsets", {0, 0}}};
  write_raw_safetensors(path, t, "");
  CHECK(contains(error_of([&] { read_safetensors(path); }), "tensor 'w' shape [4294967296,4294967296] overflows"));
}

TEST_CASE("files: the header is checked against the config before the model is allocated") {
  TempDir dir("files");
  const std::string path = dir / "big.safetensors";
  save_tiny(path);
  edit_config(path, [](json& c) { c["n_layer"] = 50000; });
  const size_t rss0 = peak_rss_now();
  const std::string err = error_of([&] { load_model(path); });
  CHECK(contains(err, "does not match its own config"));
  CHECK(contains(err, "it needs 600004 tensors, the file holds 28"));
  CHECK(peak_rss_now() < rss0 + (64u << 20));  // the old loader reached 2.6 GB here

  save_tiny(path);
  edit_config(path, [](json& c) { c["n_embd"] = 4000; });  // as many tensors, far more bytes than the file holds
  CHECK(contains(error_of([&] { load_model(path); }), "its weights need "));

  save_tiny(path);
  edit_header(path, [](json& h) {
    h["transformer.h.1.ln_2.weigth"] = h["transformer.h.1.ln_2.weight"];
    h.erase("transformer.h.1.ln_2.weight");
  });
  CHECK(error_of([&] { load_model(path); }) == "'" + path + "' has no tensor 'transformer.h.1.ln_2.weight'");
}

TEST_CASE("files: config values and shapes must be integers in range, reported as written") {
  TempDir dir("files");
  const std::string path = dir / "cfg.safetensors";
  auto with_config = [&](const char* key, const json& value) {
    save_tiny(path);
    edit_config(path, [&](json& c) { c[key] = value; });
    return error_of([&] { load_model(path); });
  };
  CHECK(contains(with_config("n_layer", 1099511627776ULL), "n_layer 1099511627776 is out of range"));
  CHECK(contains(with_config("n_layer", 1.5), "n_layer 1.5 is not an integer"));
  CHECK(contains(with_config("n_head", "2"), "n_head \"2\" is not an integer"));
  CHECK(contains(with_config("block_size", -8), "block_size -8 must be in 1..4096"));

  save_tiny(path);
  edit_header(path, [](json& h) { h["transformer.ln_f.bias"]["shape"] = {8.5}; });
  CHECK(contains(error_of([&] { load_model(path); }), "tensor 'transformer.ln_f.bias' dimension 8.5 is not an integer"));
  save_tiny(path);
  edit_header(path, [](json& h) { h["transformer.ln_f.bias"]["data_offsets"][0] = -4; });
  CHECK(contains(error_of([&] { load_model(path); }), "data offset -4 is out of range"));
  save_tiny(path);
  edit_header(path, [](json& h) { h["transformer.ln_f.bias"]["data_offsets"][1] = 1e30; });
  CHECK(contains(error_of([&] { load_model(path); }), "is not an integer"));
}

TEST_CASE("files: devices, FIFOs and directories are refused without being read, and so are huge files") {
  TempDir dir("files");
  CHECK(error_of([] { read_file("/dev/zero"); }) == "'/dev/zero' is a character device, not a regular file");
  CHECK(error_of([] { load_model("/dev/zero"); }) == "'/dev/zero' is a character device, not a regular file");
  CHECK(error_of([&] { load_dataset(dir.str()); }) == "'" + dir.str() + "' is a directory, not a regular file");
  const std::string fifo = dir / "fifo";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  CHECK(error_of([&] { read_file(fifo); }) == "'" + fifo + "' is a FIFO (named pipe), not a regular file");

  const std::string eleven = dir / "eleven.txt";
  spit(eleven, "hello world");
  CHECK(read_file(eleven, 11) == "hello world");
  CHECK(error_of([&] { read_file(eleven, 10); }) ==
        "'" + eleven + "' is 11 bytes, larger than the 10 bytes limit for files chargpt reads");
  CHECK(contains(error_of([&] { read_file(eleven, 1); }), "limit"));
  CHECK(kMaxReadBytes == (uint64_t(2) << 30));

  // The commands: checkpoint, data and prompt file.
  auto r = run_cli("eval --checkpoint /dev/zero", 20);
  CHECK(r.status == 1);
  CHECK(r.output == "chargpt eval: error: '/dev/zero' is a character device, not a regular file\n");
  r = run_cli("train --steps 1 --data " + fifo + " --out " + dir / "o.safetensors", 20);
  CHECK(r.status == 1);
  CHECK(contains(r.output, "'" + fifo + "' is a FIFO (named pipe), not a regular file"));
  r = run_cli("sample --prompt-file /dev/zero", 20);
  CHECK(r.status == 1);
  CHECK(contains(r.output, "'/dev/zero' is a character device, not a regular file"));
  r = run_cli("sample --prompt-file " + fifo, 20);
  CHECK(r.status == 1);
  CHECK(contains(r.output, "is a FIFO"));
}

TEST_CASE("files: a flipped byte in the tensor data is reported as corruption, naming the file") {
  TempDir dir("files");
  const std::string path = dir / "flip.safetensors";
  save_tiny(path);
  {
    Metadata meta;
    const Model m = load_model(path, &meta);
    CHECK(m.checksum_verified);
    CHECK(meta[kChecksumKey].starts_with(kChecksumAlgo));
    CHECK(meta[kChecksumKey].size() == std::string(kChecksumAlgo).size() + 16);
  }
  std::string bytes = bytes_of(path);
  for (size_t at : {bytes.size() - 1, bytes.size() - 4000, bytes.size() / 2 + 3}) {
    std::string bad = bytes;
    bad[at] ^= 0x01;  // one bit of one float: still a plausible weight
    spit(path, bad);
    const std::string err = error_of([&] { load_model(path); });
    CAPTURE(at);
    CHECK(err.starts_with("'" + path + "' is corrupt: its tensor data does not match the checksum"));
  }
  auto r = run_cli("eval --checkpoint " + path + " --data " + dir / "x.txt");
  CHECK(r.status == 1);
  CHECK(contains(r.output, "'" + path + "' is corrupt"));
  // The checksum of a known input, so that the format cannot drift unnoticed.
  CHECK(fnv64_words("abcdefgh", 8) == fnv64_words("abcdefgh", 8));
  Fnv64Words split;
  split.update("abcd", 4);
  split.update("efgh", 4);
  CHECK(split.h == fnv64_words("abcdefgh", 8));
  CHECK(fnv64_words("", 0) == 0xcbf29ce484222325ull);
  CHECK(fnv64_words("a", 1) == 0xaf63dc4c8601ec8cull);  // FNV-1a 64 of "a"
}

TEST_CASE("files: a changed character in the metadata or the tensor list is reported as corruption, naming the file") {
  TempDir dir("files");
  const std::string path = dir / "meta.safetensors";
  save_tiny(path);
  const std::string bytes = bytes_of(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const std::string header = bytes.substr(8, n);
  REQUIRE(header.find(std::string("\"") + kHeaderChecksumKey + "\":\"" + kChecksumAlgo) != std::string::npos);
  CHECK(read_safetensors_metadata(path).at(kHeaderChecksumKey).size() == std::string(kChecksumAlgo).size() + 16);
  // Each edit keeps the file loadable without the checksum: a vocabulary character
  // (silently wrong text), a config digit, a tensor's data offset.
  const auto vocab_at = header.find("ab", header.find("\"vocab\":\""));  // the 'a' of the tiny vocabulary
  const auto cfg_at = header.find("n_layer\\\":") + 10;  // in the config's escaped JSON string
  REQUIRE(header.substr(cfg_at, 1) == "2");
  for (const auto& [at, to] : {std::pair{vocab_at, 'Z'}, std::pair{cfg_at, '3'}}) {
    std::string bad = bytes;
    bad[8 + at] = to;
    spit(path, bad);
    CAPTURE(header.substr(at, 12));
    CAPTURE(error_of([&] { load_model(path); }));
    const std::string want = "'" + path + "' is corrupt: its header (metadata and tensor list) does not match the checksum";
    CHECK(error_of([&] { load_model(path); }).starts_with(want));
    CHECK(error_of([&] { read_safetensors_metadata(path); }).starts_with(want));
    auto r = run_cli("sample --tokens 3 --checkpoint " + path);
    CHECK(r.status == 1);
    CHECK(contains(r.output, want));
  }
  // Without the header checksum the vocabulary edit loads: what the checksum is there for.
  spit(path, bytes);
  edit_header(path, [](json& h) {
    std::string v = h["__metadata__"]["vocab"];
    v[0] = 'Z';
    h["__metadata__"]["vocab"] = v;
  });
  Metadata meta;
  CHECK_NOTHROW(load_model(path, &meta));
  CHECK(meta["vocab"][0] == 'Z');
  CHECK(meta.count(kHeaderChecksumKey) == 0);
}

TEST_CASE("files: a checkpoint without a checksum still loads, and the commands say so") {
  TempDir dir("files");
  const std::string path = dir / "foreign.safetensors";
  save_tiny(path);
  const Model verified = load_model(path);
  CHECK(unverified_note(path, verified).empty());
  edit_header(path, [](json& h) { h["__metadata__"].erase(kChecksumKey); });
  const Model m = load_model(path);
  CHECK_FALSE(m.checksum_verified);
  CHECK(std::memcmp(m.params.data(), verified.params.data(), m.params.size() * 4) == 0);
  CHECK(contains(unverified_note(path, m), "carries no data checksum"));
  spit(dir / "text.txt", tiny_text());
  auto r = run_cli("eval --checkpoint " + path + " --data " + dir / "text.txt");
  CAPTURE(r.output);
  CHECK(r.status == 0);
  CHECK(contains(r.output, "note: '" + path + "' carries no data checksum"));
  CHECK(contains(r.output, "val loss "));
  r = run_cli("sample --tokens 3 --checkpoint " + path);
  CHECK(r.status == 0);
  CHECK(contains(r.output, "carries no data checksum"));
  // Another tool's checksum (an algorithm we do not know) is left alone.
  edit_header(path, [](json& h) { h["__metadata__"][kChecksumKey] = "sha256:abc"; });
  CHECK_FALSE(load_model(path).checksum_verified);
}

TEST_CASE("files: non-finite weights are refused, naming the checkpoint") {
  TempDir dir("files");
  const std::string path = dir / "nan.safetensors";
  save_tiny(path, 3, [](float* p) { p[3] = std::numeric_limits<float>::quiet_NaN(); });
  CHECK(error_of([&] { load_model(path); }) ==
        "'" + path + "' holds a non-finite weight (nan) in tensor 'transformer.wte.weight' at index 3: the model "
        "is unusable (saved from a diverged run, or damaged)");
  spit(dir / "text.txt", tiny_text());
  auto r = run_cli("eval --checkpoint " + path + " --data " + dir / "text.txt");
  CHECK(r.status == 1);
  CHECK(contains(r.output, "non-finite weight"));
  CHECK_FALSE(contains(r.output, "loss nan"));
  r = run_cli("sample --temperature 0 --tokens 20 --checkpoint " + path);
  CHECK(r.status == 1);
  CHECK(contains(r.output, "'" + path + "' holds a non-finite weight"));

  const size_t last = num_params(tiny_config()) - 1;
  save_tiny(path, 3, [&](float* p) { p[last] = -std::numeric_limits<float>::infinity(); });
  CHECK(contains(error_of([&] { load_model(path); }), "(-inf) in tensor 'transformer.ln_f.bias' at index 7"));
}

TEST_CASE("files: metadata mistakes give one message each, never map::at or stoi") {
  TempDir dir("files");
  const std::string path = dir / "meta.safetensors";
  auto with_meta = [&](const std::function<void(json&)>& f) {
    save_tiny(path);
    edit_header(path, [&](json& h) { f(h["__metadata__"]); });
    return error_of([&] { load_model(path); });
  };
  CHECK(with_meta([](json& m) { m.erase("vocab"); }) == "'" + path + "' is not a chargpt checkpoint: metadata 'vocab' is missing");
  CHECK(with_meta([](json& m) { m.erase("config"); }) == "'" + path + "' is not a chargpt checkpoint: metadata 'config' is missing");
  CHECK(with_meta([](json& m) { m.erase("version"); }) == "'" + path + "' is not a chargpt checkpoint: metadata 'version' is missing");
  CHECK(contains(with_meta([](json& m) { m["version"] = "2"; }), "format version '2' is not supported"));
  CHECK(contains(with_meta([](json& m) { m["config"] = "[1,2]"; }), "metadata 'config' is malformed: it is not a JSON object"));
  CHECK(contains(with_meta([](json& m) { m["config"] = "{"; }), "metadata 'config' is malformed"));
  CHECK(contains(with_meta([](json& m) {
                   json c = json::parse(m["config"].get<std::string>());
                   c.erase("n_head");
                   m["config"] = c.dump();
                 }),
                 "metadata 'config' is malformed: it has no 'n_head'"));
  CHECK(contains(with_meta([](json& m) { m["vocab"] = "ba\n\xc3\xa9\xe2\x98\x83"; }), "metadata 'vocab': vocabulary is not sorted"));
  CHECK(contains(with_meta([](json& m) { m["vocab"] = ""; }), "metadata 'vocab': vocabulary is empty"));
  CHECK(contains(with_meta([](json& m) { m["vocab"] = "ab"; }), "vocabulary has 2 characters but config says vocab_size 5"));
  for (const char* bad : {"-3", "12x", "", "99999999999", "+4"})
    CHECK(contains(error_of([&] { parse_step(bad, "step in 'f'"); }), "is not a step count"));
  CHECK(parse_step("0", "s") == 0);
  CHECK(parse_step("2147483647", "s") == 2147483647);
  CHECK(decode_rng_state(encode_rng_state({1, 2, 0xffffffffffffffffull, 0})) ==
        std::array<uint64_t, 4>{1, 2, 0xffffffffffffffffull, 0});
  CHECK(contains(error_of([] { decode_rng_state("0 1 2 3"); }), "is not four 16-digit hexadecimal words"));
}

TEST_CASE("files: the empty-data message names the file") {
  TempDir dir("files");
  const std::string path = dir / "empty.txt";
  spit(path, "");
  CHECK(error_of([&] { load_dataset(path); }) == "data file '" + path + "': the text is empty");
  auto r = run_cli("train --steps 1 --data " + path + " --out " + dir / "o.safetensors");
  CHECK(r.status == 1);
  CHECK(contains(r.output, "data file '" + path + "': the text is empty"));
}

TEST_CASE("files: out-of-vocabulary characters are listed up to 20, then counted") {
  const Tokenizer tok = Tokenizer::from_text(utf8_decode("ab"));
  std::u32string text = U"ab";
  for (char32_t c = U'A'; c < U'A' + 30; ++c) text += c, text += c;  // 30 distinct, each twice
  const std::string err = error_of([&] { tok.encode(text); });
  CHECK(err.starts_with("characters not in the vocabulary: 'A' (U+0041), 'B' (U+0042)"));
  CHECK(contains(err, "'T' (U+0054) and 10 more"));
  CHECK_FALSE(contains(err, "'U' (U+0055)"));
  size_t listed = 0;
  for (size_t p = err.find("U+"); p != std::string::npos; p = err.find("U+", p + 1)) ++listed;
  CHECK(listed == 20);
  // Exactly 20: no "more".
  CHECK_FALSE(contains(error_of([&] { tok.encode(text.substr(0, 2 + 40)); }), "more"));
}
