// libFuzzer target: the UTF-8 decoder and tokenizer, as a prompt or corpus
// reaches them. Properties: valid input round-trips through encode/decode;
// a vocabulary missing characters gives an error, never a wrong encoding.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "io/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  std::u32string cps;
  try {
    cps = chargpt::utf8_decode(bytes);
  } catch (const std::runtime_error&) {
    return 0;
  }
  if (chargpt::utf8_encode(cps) != bytes) __builtin_trap();  // valid UTF-8 round-trips exactly
  if (cps.empty()) return 0;
  const chargpt::Tokenizer tok = chargpt::Tokenizer::from_text(cps);
  const auto ids = tok.encode(cps);
  if (tok.decode(ids) != bytes) __builtin_trap();
  for (char32_t c : tok.vocab) (void)chargpt::describe_char(c);
  // Half the vocabulary: encoding must fail (with a bounded message) when a character is missing.
  if (tok.size() >= 2) {
    const chargpt::Tokenizer half = chargpt::Tokenizer::from_vocab(tok.vocab.substr(0, tok.vocab.size() / 2));
    try {
      half.encode(cps);
      __builtin_trap();  // cps holds every character of tok, so some are missing from half
    } catch (const std::runtime_error& e) {
      if (std::string(e.what()).size() > 2000) __builtin_trap();
    }
  }
  return 0;
}
