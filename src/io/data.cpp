#include "io/data.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <new>
#include <stdexcept>

#include "base/hash.h"

namespace chargpt {

Dataset make_dataset(const std::string& utf8_text, const Tokenizer* tok) {
  if (utf8_text.empty()) throw std::runtime_error("the text is empty");
  Dataset d;
  std::vector<int32_t> ids;
  {  // the code points live only until they are encoded
    const std::u32string cps = utf8_decode(utf8_text);
    d.tok = tok ? *tok : Tokenizer::from_text(cps);
    ids = d.tok.encode(cps);
  }
  const size_t n_train = (size_t)(0.9 * (double)ids.size());
  d.val.assign(ids.begin() + n_train, ids.end());
  ids.resize(n_train);
  d.train = std::move(ids);  // no second copy of the training tokens
  d.text_hash = fnv64_words(utf8_text.data(), utf8_text.size());
  d.text_bytes = utf8_text.size();
  return d;
}

Dataset load_dataset(const std::string& path, const Tokenizer* tok) {
  try {
    const std::string text = read_file(path);
    try {
      return make_dataset(text, tok);
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      throw std::runtime_error("data file '" + path + "': " + e.what());
    }
  } catch (const std::bad_alloc&) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.1f MiB", ec ? 0.0 : (double)size / 1048576);
    throw std::runtime_error("data file '" + path + "' (" + buf + ") does not fit in memory: reading it takes up to " +
                             std::to_string((int)kDatasetBytesPerFileByte) + " times its size; use a smaller text");
  }
}

void sample_batch(const std::vector<int32_t>& split, int batch, int block_size, Rng& rng,
                  int32_t* inputs, int32_t* targets) {
  if (split.size() < (size_t)block_size + 1)
    throw std::runtime_error("the data split has " + std::to_string(split.size()) +
                             " tokens, fewer than block_size+1 = " + std::to_string(block_size + 1));
  const uint64_t n_starts = split.size() - (size_t)block_size;  // start in [0, len-T-1]
  for (int b = 0; b < batch; ++b) {
    const size_t start = rng.below(n_starts);
    std::memcpy(inputs + (size_t)b * block_size, &split[start], sizeof(int32_t) * block_size);
    std::memcpy(targets + (size_t)b * block_size, &split[start + 1], sizeof(int32_t) * block_size);
  }
}

}  // namespace chargpt
