#pragma once
// FNV-1a with a 64-bit state over little-endian 32-bit words (trailing bytes
// one at a time): fast enough to run over every save and load, and any change
// confined to one word always changes the result (each step is a bijection of
// the state). Not cryptographic: it detects corruption, not tampering.
// Streaming: update() may be called piecewise as long as each piece but the
// last is a multiple of 4 bytes (F32 tensors always are).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

namespace chargpt {

struct Fnv64Words {
  static constexpr uint64_t kPrime = 0x100000001b3ull;
  uint64_t h = 0xcbf29ce484222325ull;
  void update(const void* p, size_t n) {
    const unsigned char* c = static_cast<const unsigned char*>(p);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
      uint32_t w;
      std::memcpy(&w, c + i, 4);
      h = (h ^ w) * kPrime;
    }
    for (; i < n; ++i) h = (h ^ c[i]) * kPrime;
  }
};

inline uint64_t fnv64_words(const void* p, size_t n) {
  Fnv64Words f;
  f.update(p, n);
  return f.h;
}

// 64-bit hash of bytes (FNV-1a over 8-byte words, then mixed): cheap, stable
// across machines of the same endianness; for comparing state between ranks.
inline uint64_t hash_bytes(const void* data, size_t n, uint64_t seed = 0) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t h = 0xcbf29ce484222325ULL ^ seed;
  auto mix = [&](uint64_t w) {
    h ^= w;
    h *= 0x100000001b3ULL;
    h ^= h >> 29;
  };
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    mix(w);
  }
  uint64_t last = 0;
  std::memcpy(&last, p + i, n - i);
  mix(last ^ ((uint64_t)(n - i) << 56));
  mix((uint64_t)n);
  // final avalanche (splitmix64's)
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
  return h ^ (h >> 31);
}

inline std::string hex64(uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)x);
  return buf;
}

}  // namespace chargpt
