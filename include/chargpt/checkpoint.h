#pragma once
// safetensors files: 8-byte little-endian header length N, N bytes of JSON,
// then raw little-endian F32 data, row-major, offsets contiguous. Written to a
// temporary file, flushed and renamed into place, so a crash never leaves a
// half-written checkpoint under the real name.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "chargpt/buffer.h"
#include "chargpt/model.h"
#include "chargpt/tokenizer.h"

namespace chargpt {

struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;
};

using Metadata = std::map<std::string, std::string>;

// Writes `path` atomically (temp file in the same directory, fsync, rename).
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors, const Metadata& meta);

struct SafetensorsFile {
  struct Entry {
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;  // byte offsets into data
  };
  Metadata meta;
  std::map<std::string, Entry> tensors;
  std::string data;  // the bytes after the header
  // Copies tensor `name` into dst, checking its dtype/shape; throws naming the file.
  void read_tensor(const std::string& name, const std::vector<int64_t>& shape, float* dst) const;
  std::string path;
};

// Parses and validates (header JSON, F32 dtypes, offsets inside the data, no overlap).
SafetensorsFile read_safetensors(const std::string& path);

inline constexpr const char* kFormatName = "chargpt";
inline constexpr const char* kFormatVersion = "1";

struct Model {
  Config cfg;
  Tokenizer tok;
  FloatBuffer params;  // num_params(cfg) floats
};

// Weights with nanoGPT's state-dict names; metadata: format, version, config
// (a JSON object as a string), vocab (the vocabulary as a UTF-8 string), plus `extra`.
void save_model(const std::string& path, const Config& cfg, const Tokenizer& tok, const float* params,
                const Metadata& extra = {});
// Throws a one-line error naming the file if it is missing, unreadable, or not a chargpt checkpoint.
Model load_model(const std::string& path, Metadata* meta_out = nullptr);

std::string config_to_json(const Config& cfg);

}  // namespace chargpt
