#pragma once
// safetensors files: 8-byte little-endian header length N, N bytes of JSON,
// then raw little-endian F32 data, row-major, offsets contiguous. Written to a
// temporary file, flushed and renamed into place, so a crash never leaves a
// half-written checkpoint under the real name.
//
// Files are hostile: every size in a header is checked (overflow, the file's
// real size) before anything is allocated, and the tensor data carries a
// checksum in `__metadata__` (`data_checksum`), verified on load.
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/buffer.h"
#include "model/model.h"
#include "io/tokenizer.h"

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

// Weights with nanoGPT's state-dict names; metadata: format, version, config
// (a JSON object as a string), vocab (the vocabulary as a UTF-8 string),
// data_checksum, plus `extra`.
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

// ---------------------------------------------------------------------------
// Training checkpoints: the weights file plus the optimizer-state file beside it.
//
// The two are saved as a pair: a kill at any moment leaves a weights file whose
// optimizer state is on disk. The weights file records the step and the
// checksum of its optimizer file's data (`optim_checksum`). A save:
//   1. writes both new files as X.tmp and X.optim.tmp, each flushed (fsync);
//   2. if the optimizer file on disk is the one the weights on disk record, it
//      is renamed to `*.optim.safetensors.prev` (else the pair's optimizer
//      state is there already, from an earlier interrupted save);
//   3. renames the new optimizer file into place, then 4. the new weights, and
//   5. removes `.prev`.
// Until 4 the old weights pair with `.prev` (or the optimizer file, before 2);
// after 4 the new weights pair with the new optimizer file. The loader picks,
// of the optimizer file and `.prev`, the one whose step and checksum the
// weights record. Stale `.tmp` files are never read and are overwritten by the
// next save. `chargpt eval`/`sample` read the weights file alone: it is a plain
// safetensors file (F32, nanoGPT's names) with extra metadata.

// The optimizer-state file that sits beside a weights file.
std::string optim_state_path(const std::string& weights_path);

inline constexpr const char* kOptimFormatName = "chargpt-optim";
// 1: step, data_rng, config. 2: + seed, batch_size, data_bytes, data_hash, data_path.
inline constexpr const char* kOptimFormatVersion = "2";

// What a resumable run keeps besides weights and AdamW moments.
struct TrainState {
  int step = 0;                         // completed optimizer steps
  std::array<uint64_t, 4> data_rng{};   // the batch sampler's xoshiro state
  // The run's identity, which a resumed run must share (absent from version-1 files).
  bool has_run_identity = false;
  uint64_t seed = 0;
  int batch_size = 0;
  uint64_t data_hash = 0, data_bytes = 0;  // of the training text (Dataset::text_hash/bytes)
  std::string data_path;                   // as given when saved, for messages only
};

// The RNG state as text (4 words of 16 hex digits) and back; decode throws on anything else.
std::string encode_rng_state(const std::array<uint64_t, 4>& s);
std::array<uint64_t, 4> decode_rng_state(const std::string& text);

// Saves weights and optimizer state as a pair (see above). m and v hold num_params(cfg) floats.
void save_training_checkpoint(const std::string& weights_path, const Config& cfg, const Tokenizer& tok,
                              const float* params, const float* m, const float* v, const TrainState& st);

// Loads the optimizer state that pairs with the weights at weights_path
// (already loaded as `model`, with metadata wmeta) into m and v (num_params
// floats each) and returns the rest of the state. Throws naming the files if
// there is none, or if it is corrupt or from another model.
TrainState load_optimizer_state(const std::string& weights_path, const Model& model, const Metadata& wmeta, float* m,
                                float* v);

// A non-negative decimal integer that fits an int, as metadata stores steps;
// throws naming `what` and the text otherwise.
int parse_step(const std::string& text, const std::string& what);

}  // namespace chargpt
