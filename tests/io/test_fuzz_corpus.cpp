// The fuzzers' seed corpus and every input a fuzzer ever crashed on
// (tests/fuzz/regressions/TARGET-*), run through the same entry points as the
// fuzz targets: each file is accepted or refused with one runtime_error, and
// the seeds that are known to be bad are refused with the right message.
#include <doctest/doctest.h>

#include <filesystem>
#include <stdexcept>

#include "io/checkpoint.h"
#include "io/tokenizer.h"
#include "support.h"

using namespace chargpt;
using namespace chargpt::test;
namespace fs = std::filesystem;

namespace {

const fs::path kFuzzDir = fs::path(CHARGPT_SOURCE_DIR) / "tests" / "fuzz";

// What the checkpoint target does; returns the error, "" if the file loads.
std::string load_as_checkpoint(const std::string& path) {
  return error_of([&] { model_from_safetensors(parse_safetensors(bytes_of(path), path)); });
}

std::vector<fs::path> files_in(const fs::path& dir, const std::string& prefix = "") {
  std::vector<fs::path> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename().string().starts_with(prefix)) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("fuzz corpus: the checkpoint seeds load or are refused with the expected message") {
  const fs::path dir = kFuzzDir / "corpus" / "checkpoint";
  REQUIRE(fs::exists(dir));
  auto err = [&](const char* name) { return load_as_checkpoint((dir / name).string()); };
  CHECK(err("real_tiny.safetensors") == "");
  CHECK(err("no_checksum.safetensors") == "");
  CHECK(err("truncated.safetensors").find("is not a valid safetensors file") != std::string::npos);
  CHECK(err("flipped.safetensors").find("is corrupt") != std::string::npos);
  CHECK(err("real_tiny_header_checksum.safetensors") == "");  // written with the header checksum
  CHECK(err("header_flipped.safetensors").find("is corrupt: its header") != std::string::npos);  // vocab 'b' -> 'x'
  CHECK(err("n_layer_50000.safetensors").find("it needs 600004 tensors") != std::string::npos);
  CHECK(err("n_embd_overflow.safetensors").find("parameter count overflows") != std::string::npos);
  CHECK(err("n_layer_float.safetensors").find("n_layer 1.5 is not an integer") != std::string::npos);
  CHECK(err("shape_float.safetensors").find("dimension 4.5 is not an integer") != std::string::npos);
  CHECK(err("no_vocab.safetensors").find("metadata 'vocab' is missing") != std::string::npos);
  CHECK(err("nan_weight_nochecksum.safetensors").find("non-finite weight (nan)") != std::string::npos);
  CHECK(err("huge_header_len.safetensors").find("exceeds the file size") != std::string::npos);
  CHECK(err("empty_object.safetensors").find("metadata 'format' is not 'chargpt'") != std::string::npos);
}

TEST_CASE("fuzz corpus: every seed and regression input is accepted or refused with one error") {
  int files = 0;
  for (const char* target : {"safetensors", "checkpoint"}) {
    for (const auto& p : files_in(kFuzzDir / "corpus" / target)) {
      CAPTURE(p.string());
      try {
        model_from_safetensors(parse_safetensors(bytes_of(p.string()), p.string()));
      } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()).size() < 1000);  // one line, not a dump
      }
      ++files;
    }
  }
  for (const auto& p : files_in(kFuzzDir / "regressions")) {
    CAPTURE(p.string());
    const std::string bytes = bytes_of(p.string());
    if (p.filename().string().starts_with("utf8-")) {
      std::u32string cps;
      bool valid = true;
      try {
        cps = utf8_decode(bytes);
      } catch (const std::runtime_error&) {
        valid = false;
      }
      if (valid) CHECK(utf8_encode(cps) == bytes);
    } else {
      try {
        model_from_safetensors(parse_safetensors(bytes, p.string()));
      } catch (const std::runtime_error&) {
      }
    }
    ++files;
  }
  for (const auto& p : files_in(kFuzzDir / "corpus" / "utf8")) {
    const std::string bytes = bytes_of(p.string());
    std::string err, round_trip;
    try {
      round_trip = utf8_encode(utf8_decode(bytes));
    } catch (const std::runtime_error& e) {
      err = e.what();
    }
    if (err.empty()) CHECK(round_trip == bytes);
    const std::string name = p.filename().string();
    CAPTURE(name);
    CHECK(err.empty() == (name == "ascii.txt" || name == "multibyte.txt" || name == "max_cp.txt" ||
                          name == "tiny_corpus.txt"));
    ++files;
  }
  CHECK(files >= 30);
}
