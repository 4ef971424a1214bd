#pragma once
// Training checkpoints: the weights file (checkpoint.h) plus the optimizer-state
// file beside it.
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
#include <array>
#include <cstdint>
#include <string>

#include "io/checkpoint.h"

namespace chargpt {

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
  // What computed the run's products, kept in the weights file's metadata so that a resume can say
  // when its bits will differ from an uninterrupted run's; "" when the file does not record it.
  std::string trained_with;  // "trained_with": backend and precision, e.g. "onednn fp32"
  std::string trained_on;    // "trained_on": the CPU, e.g. "AMD EPYC (avx2 fma avx512f avx512bw avx512_bf16)"
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
