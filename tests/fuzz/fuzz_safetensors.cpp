// libFuzzer target: the safetensors reader on arbitrary bytes. Our errors are
// std::runtime_error; anything else escaping (a json exception, bad_alloc,
// out_of_range) is a finding, and so is any sanitizer report.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const chargpt::SafetensorsFile f =
        chargpt::parse_safetensors(std::string(reinterpret_cast<const char*>(data), size), "fuzz.safetensors");
    for (const auto& [name, e] : f.tensors) {  // every accepted tensor can be copied out
      std::vector<float> buf((e.end - e.begin) / 4 + 1);
      f.read_tensor(name, e.shape, buf.data());
    }
  } catch (const std::runtime_error&) {
  }
  return 0;
}
