// Headers nested deeper than the format needs are refused by a flat scan,
// before anything parses (and later copies or dumps) them recursively.
#include <doctest/doctest.h>

#include <cstring>
#include <string>

#include "io/checkpoint.h"
#include "io/json_depth.h"
#include "support.h"

using namespace chargpt;
using namespace chargpt::test;

namespace {

// The crash input of the hostile probe: a header holding a header_checksum key and
// a list nested `depth` deep, as a whole safetensors file.
std::string deep_header_file(int depth) {
  std::string h = "{\"__metadata__\":{\"header_checksum\":\"fnv1a64w32:0000000000000000\"},\"x\":";
  h += std::string(depth, '[') + std::string(depth, ']') + "}";
  std::string bytes(8, '\0');
  const uint64_t n = h.size();
  std::memcpy(bytes.data(), &n, 8);
  return bytes + h;
}

}  // namespace

TEST_CASE("json depth: the flat scan counts brackets outside strings only") {
  CHECK(json_depth("{}", 3) == 1);
  CHECK(json_depth("{\"a\":{\"b\":[1,[2]]}}", 9) == 4);
  CHECK(json_depth("{\"a\":\"[[[[{{{{\"}", 9) == 1);
  CHECK(json_depth("{\"a\\\"[[[\":1}", 9) == 1);  // an escaped quote does not end the string
  CHECK(json_depth("]]]]{", 9) == 1);
  CHECK(json_depth(std::string(1000000, '['), 3) == 4);  // stops one level past the limit
}

TEST_CASE("json depth: a header nested 100 000 deep is refused with one line by every reader") {
  TempDir dir("deep");
  const std::string bytes = deep_header_file(100000);
  const std::string err = error_of([&] { parse_safetensors(bytes, "deep.safetensors"); });
  CHECK(err == "'deep.safetensors' is not a valid safetensors file: header nests deeper than the 3 levels of the format");
  spit(dir / "deep.safetensors", bytes);
  CHECK(error_of([&] { read_safetensors_metadata(dir / "deep.safetensors"); }) ==
        "'" + (dir / "deep.safetensors") + "' is not a valid safetensors file: header nests deeper than the 3 levels "
                                           "of the format");
  CHECK(contains(error_of([&] { load_model(dir / "deep.safetensors"); }), "nests deeper"));
  // The deepest header the format has (a tensor's shape list) still loads.
  save_tiny(dir / "ok.safetensors");
  CHECK(error_of([&] { load_model(dir / "ok.safetensors"); }) == "");
  // A config nested inside its string is refused before it is parsed.
  edit_config(dir / "ok.safetensors", [](nlohmann::json& c) { c["n_layer"] = nlohmann::json::array({{{1}}}); });
  CHECK(contains(error_of([&] { load_model(dir / "ok.safetensors"); }),
                      "metadata 'config' is malformed: it nests deeper than one object"));
}
