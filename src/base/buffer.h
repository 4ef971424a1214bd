#pragma once
// A 64-byte-aligned float buffer: one allocation, cache-line aligned so that
// per-worker buffers never share a line (no false sharing) and SIMD loads align.
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

namespace chargpt {

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

struct FloatBuffer {
  std::unique_ptr<float[], AlignedFree> ptr;
  size_t n = 0;

  FloatBuffer() = default;
  explicit FloatBuffer(size_t count) { resize(count); }
  void resize(size_t count) {
    const size_t bytes = ((count * sizeof(float) + 63) / 64) * 64;
    float* p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes ? bytes : 64);
    ptr.reset(p);
    n = count;
  }
  float* data() { return ptr.get(); }
  const float* data() const { return ptr.get(); }
  size_t size() const { return n; }
  float& operator[](size_t i) { return ptr[i]; }
  const float& operator[](size_t i) const { return ptr[i]; }
  void zero() { std::memset(ptr.get(), 0, n * sizeof(float)); }
};

}  // namespace chargpt
