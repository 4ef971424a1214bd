#pragma once
// The one hash family of chargpt: FNV-1a with a 64-bit state, fed words of
// 4 or 8 bytes (or whole integers) instead of single bytes. Fast enough to run
// over every save and load, and any change confined to one word always changes
// the state (each step is a bijection of it). Not cryptographic: it detects
// corruption and mismatched state, not tampering. Three uses:
//   - fnv64_words / Fnv64Words: 32-bit little-endian words, trailing bytes one at
//     a time. The data and header checksums of every file chargpt writes, and the
//     training text's hash: the format on disk, so these bits never change.
//   - Fnv64Values: whole integers, for hash tables keyed by a few numbers.
//   - hash_bytes: 64-bit words, then mixed: comparing state between ranks and runs.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

namespace chargpt {

inline constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
inline constexpr uint64_t kFnvPrime = 0x100000001b3ull;

// One FNV-1a step over a word.
constexpr uint64_t fnv1a_step(uint64_t h, uint64_t word) { return (h ^ word) * kFnvPrime; }

// Streaming: update() may be called piecewise as long as each piece but the
// last is a multiple of 4 bytes (F32 tensors always are).
struct Fnv64Words {
  uint64_t h = kFnvOffset;
  void update(const void* p, size_t n) {
    const unsigned char* c = static_cast<const unsigned char*>(p);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
      uint32_t w;
      std::memcpy(&w, c + i, 4);
      h = fnv1a_step(h, w);
    }
    for (; i < n; ++i) h = fnv1a_step(h, c[i]);
  }
};

inline uint64_t fnv64_words(const void* p, size_t n) {
  Fnv64Words f;
  f.update(p, n);
  return f.h;
}

// Whole integers, one step each (a float key goes in as its bit pattern).
struct Fnv64Values {
  uint64_t h = kFnvOffset;
  Fnv64Values& add(uint64_t v) {
    h = fnv1a_step(h, v);
    return *this;
  }
};

// 64-bit hash of bytes: 8-byte words, each step followed by a shift-xor, the
// length, then splitmix64's final avalanche. Stable across machines of the same
// endianness.
inline uint64_t hash_bytes(const void* data, size_t n, uint64_t seed = 0) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t h = kFnvOffset ^ seed;
  auto mix = [&](uint64_t w) {
    h = fnv1a_step(h, w);
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
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
  return h ^ (h >> 31);
}

inline std::string hex64(uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)x);
  return buf;
}

// Exactly 16 lowercase hex digits at p (hex64's form) into out; false otherwise.
inline bool parse_hex64(const char* p, uint64_t& out) {
  out = 0;
  for (int k = 0; k < 16; ++k) {
    const char c = p[k];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    out = (out << 4) | (uint64_t)d;
  }
  return true;
}

}  // namespace chargpt
