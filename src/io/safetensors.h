#pragma once
// safetensors files: 8-byte little-endian header length N, N bytes of JSON,
// then raw little-endian F32 data, row-major, offsets contiguous. Written to a
// temporary file, flushed and renamed into place, so a crash never leaves a
// half-written file under the real name.
//
// Files are hostile: every size in a header is checked (overflow, the file's
// real size) before anything is allocated, and the tensor data carries a
// checksum in `__metadata__` (`data_checksum`), verified on load.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace chargpt {

struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;
};

using Metadata = std::map<std::string, std::string>;

// The metadata key of the data checksum, and its value's prefix (the algorithm,
// then 16 hex digits of hash.h's fnv64_words over every byte after the header).
inline constexpr const char* kChecksumKey = "data_checksum";
inline constexpr const char* kChecksumAlgo = "fnv1a64w32:";
// The metadata key of the header checksum: the same algorithm over the header's
// JSON as nlohmann-json dumps it (keys sorted, no spaces) without this one key. It
// covers the metadata (vocab, config, step, data hash, the data checksum) and the
// tensor entries. Files written before it existed have none and load as before.
inline constexpr const char* kHeaderChecksumKey = "header_checksum";

// Writes `path` atomically (temp file in the same directory, fsync, rename).
// Adds the data and header checksums to the metadata.
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors, const Metadata& meta);
// Writes a complete file at `path` itself (created or truncated) and flushes it
// to disk; the caller renames it into place. Returns the data checksum it recorded.
std::string write_safetensors_synced(const std::string& path, const std::vector<TensorRef>& tensors, Metadata meta);

struct SafetensorsFile {
  struct Entry {
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;  // byte offsets into data
  };
  Metadata meta;
  std::map<std::string, Entry> tensors;
  std::string data;  // the bytes after the header
  std::string path;
  // The header carried a data checksum of ours and the data matched it.
  // (A file whose data does not match is refused when it is parsed.)
  bool checksum_verified = false;
  // Copies tensor `name` into dst, checking its dtype/shape; throws naming the file.
  void read_tensor(const std::string& name, const std::vector<int64_t>& shape, float* dst) const;
};

// Parses and validates a whole file's bytes (header JSON, F32 dtypes, integer
// shapes and offsets inside the data, no overlap, the checksum if present).
// `path` only names the file in messages.
SafetensorsFile parse_safetensors(std::string bytes, const std::string& path);
SafetensorsFile read_safetensors(const std::string& path);
// The header's `__metadata__` only: reads the length and the header, not the data.
Metadata read_safetensors_metadata(const std::string& path);

// An integer JSON value in [lo, hi]; floats (1.5, and 16.0 too) and values out
// of range throw, naming `what` and the value as written.
int64_t json_int(const nlohmann::json& v, int64_t lo, uint64_t hi, const std::string& what);
// "[a,b,c]", as messages show a shape.
std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace chargpt
