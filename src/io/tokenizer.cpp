#include "io/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <unordered_set>

namespace chargpt {

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  auto fail = [&](const char* why) {
    throw std::runtime_error("invalid UTF-8 at byte " + std::to_string(i) + ": " + why);
  };
  while (i < s.size()) {
    const unsigned char c = (unsigned char)s[i];
    int len;
    char32_t cp;
    if (c < 0x80) { len = 1; cp = c; }
    else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else fail("unexpected byte");
    if (i + len > s.size()) fail("truncated sequence");
    for (int k = 1; k < len; ++k) {
      const unsigned char cc = (unsigned char)s[i + k];
      if ((cc & 0xC0) != 0x80) fail("bad continuation byte");
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr char32_t min_for_len[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_len[len]) fail("overlong encoding");
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("not a Unicode scalar value");
    out.push_back(cp);
    i += len;
  }
  return out;
}

std::string utf8_encode(char32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += (char)cp;
  } else if (cp < 0x800) {
    out += (char)(0xC0 | (cp >> 6));
    out += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += (char)(0xE0 | (cp >> 12));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  } else {
    out += (char)(0xF0 | (cp >> 18));
    out += (char)(0x80 | ((cp >> 12) & 0x3F));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  }
  return out;
}

std::string utf8_encode(std::u32string_view cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t cp : cps) out += utf8_encode(cp);
  return out;
}

std::string describe_char(char32_t cp) {
  char code[16];
  std::snprintf(code, sizeof code, "U+%04X", (unsigned)cp);
  std::string shown;
  switch (cp) {
    case '\n': shown = "\\n"; break;
    case '\t': shown = "\\t"; break;
    case '\r': shown = "\\r"; break;
    default: shown = (cp < 0x20 || cp == 0x7F) ? std::string("?") : utf8_encode(cp);
  }
  return "'" + shown + "' (" + code + ")";
}

Tokenizer Tokenizer::from_text(std::u32string_view corpus) {
  std::u32string v(corpus);
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return Tokenizer{std::move(v)};
}

Tokenizer Tokenizer::from_vocab(std::u32string vocab) {
  for (size_t i = 1; i < vocab.size(); ++i)
    if (vocab[i - 1] >= vocab[i]) throw std::runtime_error("vocabulary is not sorted and unique");
  if (vocab.empty()) throw std::runtime_error("vocabulary is empty");
  return Tokenizer{std::move(vocab)};
}

int Tokenizer::find(char32_t cp) const {
  auto it = std::lower_bound(vocab.begin(), vocab.end(), cp);
  return (it != vocab.end() && *it == cp) ? (int)(it - vocab.begin()) : -1;
}

std::vector<int32_t> Tokenizer::encode(std::u32string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  std::u32string missing;          // in order of appearance
  std::unordered_set<char32_t> seen;  // the same: a linear-time test for any text
  for (char32_t cp : text) {
    const int id = find(cp);
    if (id < 0) {
      if (seen.insert(cp).second) missing.push_back(cp);
    } else {
      ids.push_back(id);
    }
  }
  if (!missing.empty()) {
    std::string msg = missing.size() == 1 ? "character not in the vocabulary: "
                                          : "characters not in the vocabulary: ";
    // At most kShown of them, so that a foreign text gives one readable line.
    constexpr size_t kShown = 20;
    for (size_t i = 0; i < missing.size() && i < kShown; ++i) msg += (i ? ", " : "") + describe_char(missing[i]);
    if (missing.size() > kShown) msg += " and " + std::to_string(missing.size() - kShown) + " more";
    throw std::runtime_error(msg);
  }
  return ids;
}

std::u32string Tokenizer::decode_cps(const std::vector<int32_t>& ids) const {
  std::u32string out;
  out.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= size()) throw std::runtime_error("token id " + std::to_string(id) + " out of range");
    out.push_back(vocab[id]);
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const { return utf8_encode(decode_cps(ids)); }
std::string Tokenizer::decode(int32_t id) const {
  if (id < 0 || id >= size()) throw std::runtime_error("token id " + std::to_string(id) + " out of range");
  return utf8_encode(vocab[id]);  // one code point: no vector, no u32string (called per sampled token)
}

}  // namespace chargpt
