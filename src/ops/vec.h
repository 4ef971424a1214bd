#pragma once
// Float vectors as wide as the CPU's registers (GCC vector extensions), for
// the ops' kernels, which are templates on the width W and are instantiated at
// kNativeWidth for the library (and at every width by the tests): 16 lanes in
// a zmm with AVX-512, 8 in a ymm with AVX/AVX2, 4 in an xmm otherwise. A wider
// type than the registers is not split cleanly: GCC moves it through the
// stack, which made the attention kernels 8x slower on an AVX2 CPU. Sums over a
// row keep W partial sums and add them up in a fixed order at the end, so they
// vectorise and stay deterministic (for a given width; other CPUs give other
// bits anyway, through OpenBLAS's kernels).
#include <bit>
#include <cstdint>
#include <cstring>
#include <utility>

namespace chargpt {

#if defined(__AVX512F__)
inline constexpr int kNativeWidth = 16;  // floats per vector in this build
#elif defined(__AVX__)
inline constexpr int kNativeWidth = 8;
#else
inline constexpr int kNativeWidth = 4;
#endif

// The vector of W floats. Spelled out per width: GCC drops a vector_size that
// depends on a template parameter when the type is used inside the template.
template <int W>
struct FloatVector;
template <>
struct FloatVector<4> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct FloatVector<8> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct FloatVector<16> {
  typedef float type __attribute__((vector_size(64)));
};

template <int W>
struct Vec {
  static constexpr int kW = W;  // floats per vf
  using vf = typename FloatVector<W>::type;

  static vf loadv(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void storev(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
  // v loaded once into a register for the kernels that multiply it by several scalars:
  // without this GCC folds the load into every FMA that reads v, and on Zen 4 (one 512-bit
  // load a cycle) the attention kernels then wait on loads. Only the code changes, not the
  // arithmetic. (Widths the build's registers cannot hold are left to the compiler.)
  static vf loadv_reg(const float* p) {
    vf v = loadv(p);
#if defined(__x86_64__) || defined(__i386__)
    if constexpr (W <= kNativeWidth) asm("" : "+x"(v));
#endif
    return v;
  }

  // Σ of the W lanes, in lane order.
  static float hsum(vf v) {
    float s = 0.f;
    for (int i = 0; i < W; ++i) s += v[i];
    return s;
  }

  // Σ_c x[c] over a row of C floats.
  static float row_sum(const float* x, int C) {
    vf acc = {};
    int c = 0;
    for (; c + W <= C; c += W) acc += loadv(x + c);
    float s = hsum(acc);
    for (; c < C; ++c) s += x[c];
    return s;
  }

  // {0, 1, ..., W-1}: masks lanes by their column.
  template <int... K>
  static constexpr vf lane_index(std::integer_sequence<int, K...>) {
    return vf{(float)K...};
  }
  static constexpr vf kLane = lane_index(std::make_integer_sequence<int, W>{});
};

// 2^n for a whole number n (|n| <= 127), straight into the exponent bits; on a
// float or on a vector of floats.
inline float pow2i(float n) { return std::bit_cast<float>(((int32_t)n + 127) << 23); }
template <class V>
inline V pow2i(V n) {
  typedef int32_t vi __attribute__((vector_size(sizeof(V))));
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  V r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}

// exp(x) without libm, on a float or on a vector: Cephes' range reduction and
// degree-5 polynomial (about 2 ulp), branch-free so that the softmax and GELU
// loops vectorise. libm's tanhf alone was 40% of a training step before this.
template <class V>
inline V exp_approx(V x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const V n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest
  const V r = x - n * 0.693359375f - n * -2.12194440e-4f;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V e = p * r * r + r + 1.f;
  return e * pow2i(n);
}

}  // namespace chargpt
