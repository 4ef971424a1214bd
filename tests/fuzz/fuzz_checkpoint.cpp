// libFuzzer target: the checkpoint loader (load_model's checks after the
// read: metadata, config, header against config, vocabulary, weights), and
// the parsers of the optimizer file's step and RNG state.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "io/train_state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const chargpt::SafetensorsFile f =
        chargpt::parse_safetensors(std::string(reinterpret_cast<const char*>(data), size), "fuzz.safetensors");
    for (const char* key : {"step", "data_rng"}) {
      auto it = f.meta.find(key);
      if (it == f.meta.end()) continue;
      try {
        if (it->first == "step") chargpt::parse_step(it->second, "step");
        else chargpt::decode_rng_state(it->second);
      } catch (const std::runtime_error&) {
      }
    }
    chargpt::Metadata meta;
    const chargpt::Model m = chargpt::model_from_safetensors(f, &meta);
    if (m.params.size() != chargpt::num_params(m.cfg)) __builtin_trap();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
