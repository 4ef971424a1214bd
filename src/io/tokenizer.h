#pragma once
// Character tokenizer over Unicode code points. The vocabulary is the sorted
// set of code points of the training corpus; token id = index in that set.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace chargpt {

// UTF-8 <-> code points. Invalid UTF-8 throws, naming the byte offset.
std::u32string utf8_decode(std::string_view bytes);
std::string utf8_encode(std::u32string_view cps);
std::string utf8_encode(char32_t cp);

// How a code point reads in an error message: 'a' (U+0061), '\n' (U+000A).
std::string describe_char(char32_t cp);

struct Tokenizer {
  std::u32string vocab;  // sorted, unique code points; token id = index

  static Tokenizer from_text(std::u32string_view corpus);
  static Tokenizer from_vocab(std::u32string vocab);  // checks sorted and unique

  int size() const { return (int)vocab.size(); }
  // Throws std::runtime_error naming the distinct characters not in the vocabulary
  // (the first 20 in order of appearance, then how many more).
  std::vector<int32_t> encode(std::u32string_view text) const;
  std::u32string decode_cps(const std::vector<int32_t>& ids) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string decode(int32_t id) const;
  int find(char32_t cp) const;  // -1 if absent
};

}  // namespace chargpt
