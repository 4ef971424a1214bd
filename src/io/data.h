#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "base/fs.h"  // read_file, which the data readers use
#include "base/rng.h"
#include "io/tokenizer.h"

namespace chargpt {

struct Dataset {
  Tokenizer tok;
  std::vector<int32_t> train;  // first floor(0.9 N) tokens
  std::vector<int32_t> val;    // the rest
  // Identifies the training text (bytes as read), so that a resumed run can
  // check it trains on the same text: fnv64_words of the bytes and their count.
  uint64_t text_hash = 0;
  uint64_t text_bytes = 0;
};

// Encodes a UTF-8 corpus and splits it 90/10. If `tok` is given (resume,
// eval of a checkpoint) the corpus must fit that vocabulary; else it is built.
// An empty corpus is refused; load_dataset's messages name the file.
Dataset make_dataset(const std::string& utf8_text, const Tokenizer* tok = nullptr);
// Peak memory of load_dataset per byte of the file: the text (1), its code
// points (4) and their token ids (4) at once.
inline constexpr double kDatasetBytesPerFileByte = 9;
Dataset load_dataset(const std::string& path, const Tokenizer* tok = nullptr);

// `batch` windows of block_size+1 consecutive tokens at uniformly random
// offsets: inputs = window[0..T), targets = window[1..T]. Deterministic in rng.
void sample_batch(const std::vector<int32_t>& split, int batch, int block_size, Rng& rng,
                  int32_t* inputs, int32_t* targets);

}  // namespace chargpt
