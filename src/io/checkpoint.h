#pragma once
// The model file: a safetensors file (safetensors.h) holding the weights with
// nanoGPT's state-dict names, F32, and the metadata that makes it a chargpt
// model: format, version, config (a JSON object as a string), vocab (the
// vocabulary as a UTF-8 string). What `chargpt eval` and `sample` read; a
// training run writes it as one half of a pair (train_state.h).
#include <cstdint>
#include <string>
#include <vector>

#include "base/buffer.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "model/model.h"

namespace chargpt {

inline constexpr const char* kFormatName = "chargpt";
inline constexpr const char* kFormatVersion = "1";

struct Model {
  Config cfg;
  Tokenizer tok;
  FloatBuffer params;  // num_params(cfg) floats
  // false for a file without our checksum (written by another tool): it loaded,
  // but its data could not be checked. See unverified_note.
  bool checksum_verified = false;
};

// Weights with nanoGPT's state-dict names; metadata: format, version, config,
// vocab, data_checksum, plus `extra`.
void save_model(const std::string& path, const Config& cfg, const Tokenizer& tok, const float* params,
                const Metadata& extra = {});
// Throws a one-line error naming the file if it is missing, unreadable, not a
// chargpt checkpoint, corrupt, inconsistent with its own config, or holds a
// non-finite weight. The header is checked against the config before the
// weights are allocated.
Model load_model(const std::string& path, Metadata* meta_out = nullptr);
// The same from a parsed file (the fuzz target's entry point).
Model model_from_safetensors(const SafetensorsFile& f, Metadata* meta_out = nullptr);

// One line for stderr when a loaded model carried no checksum; "" when it did.
std::string unverified_note(const std::string& path, const Model& m);

std::string config_to_json(const Config& cfg);

// The pieces of a model file, for writers that place it themselves (train_state.cpp).
Metadata model_metadata(const Config& cfg, const Tokenizer& tok, const Metadata& extra);
std::vector<TensorRef> model_tensors(const Config& cfg, const float* params);

// The index of the first non-finite float in p[0..n), or -1.
int64_t first_non_finite(const float* p, size_t n);

}  // namespace chargpt
