// Elementwise math for the CPU kernels, written so that a loop over it vectorizes (no calls, no
// branches: selects only). std::exp is a scalar call per element, and a softmax over a prefill's
// scores is millions of them per layer.
#pragma once

#include <bit>
#include <cstdint>

namespace pagedcore::cpu {

// Four float lanes (GCC / Clang vector extension: SSE on x86-64, NEON on arm64). Arithmetic on it
// stays in registers, where a plain float[16] accumulator the auto-vectorizer handles goes through
// memory on every iteration. Loads and stores go through memcpy (no alignment assumed).
typedef float Vec4 __attribute__((vector_size(16)));
inline Vec4 load4(const float* p) {
  Vec4 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void store4(float* p, Vec4 v) { __builtin_memcpy(p, &v, sizeof v); }
inline Vec4 broadcast4(float x) { return Vec4{x, x, x, x}; }

// Inlined even into a kernel variant compiled for another instruction set (cpu_isa.h), where a call
// would reach the baseline copy.
#define PAGEDCORE_VEC_INLINE inline __attribute__((always_inline))

typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec16 __attribute__((vector_size(64)));

// Sixteen float lanes held as 16 / width vectors of the variant's register width V: Vec4 (SSE, NEON),
// Vec8 (AVX2), Vec16 (AVX-512; cpu_isa.h). Lane i is the same arithmetic whatever V is, so a kernel
// written on Lanes16 gives bit-identical results in each of its variants. (GCC splits a vector wider
// than the target's registers through memory: each variant takes its own width.)
template <typename V>
struct Lanes16 {
  static constexpr int kWidth = sizeof(V) / sizeof(float);
  static constexpr int kParts = 16 / kWidth;
  static_assert(kWidth * kParts == 16);
  V part[kParts];

  static PAGEDCORE_VEC_INLINE Lanes16 zero() {
    Lanes16 r;
    for (int k = 0; k < kParts; ++k) r.part[k] = V{};
    return r;
  }
  static PAGEDCORE_VEC_INLINE Lanes16 broadcast(float x) {
    Lanes16 r;
    for (int k = 0; k < kParts; ++k) r.part[k] = V{} + x;
    return r;
  }
  static PAGEDCORE_VEC_INLINE Lanes16 load(const float* p) {  // no alignment assumed
    Lanes16 r;
    for (int k = 0; k < kParts; ++k) __builtin_memcpy(&r.part[k], p + k * kWidth, sizeof(V));
    return r;
  }
  PAGEDCORE_VEC_INLINE void store(float* p) const {
    for (int k = 0; k < kParts; ++k) __builtin_memcpy(p + k * kWidth, &part[k], sizeof(V));
  }
  PAGEDCORE_VEC_INLINE float lane(int i) const { return part[i / kWidth][i % kWidth]; }
  PAGEDCORE_VEC_INLINE Lanes16& operator+=(const Lanes16& o) {
    for (int k = 0; k < kParts; ++k) part[k] += o.part[k];
    return *this;
  }
  friend PAGEDCORE_VEC_INLINE Lanes16 operator*(const Lanes16& a, const Lanes16& b) {
    Lanes16 r;
    for (int k = 0; k < kParts; ++k) r.part[k] = a.part[k] * b.part[k];
    return r;
  }
};

// The lanes' sum in a fixed order: ((l0 + l4) + (l8 + l12)) + ... for each of the first four lanes,
// then those four pairwise.
template <typename V>
PAGEDCORE_VEC_INLINE float reduce_add(const Lanes16<V>& v) {
  float t[4];
  for (int j = 0; j < 4; ++j) t[j] = (v.lane(j) + v.lane(4 + j)) + (v.lane(8 + j) + v.lane(12 + j));
  return (t[0] + t[1]) + (t[2] + t[3]);
}

// sum of x[0..n) in a fixed order (sixteen lanes over whole chunks of 16, then the rest in turn).
template <typename V>
PAGEDCORE_VEC_INLINE float sum(const float* x, int n) {
  Lanes16<V> lanes = Lanes16<V>::zero();
  int i = 0;
  for (; i + 16 <= n; i += 16) lanes += Lanes16<V>::load(x + i);
  float rest = 0.f;
  for (; i < n; ++i) rest += x[i];
  return reduce_add(lanes) + rest;
}

// sum of a[d] * b[d] for d < n, n a multiple of 16, in float32 (another order than a sequential sum):
// sixteen independent lanes, where one accumulator would wait on each add's latency.
template <typename V>
PAGEDCORE_VEC_INLINE float dot(const float* a, const float* b, int n) {
  Lanes16<V> s = Lanes16<V>::zero();
  for (int d = 0; d < n; d += 16) s += Lanes16<V>::load(a + d) * Lanes16<V>::load(b + d);
  return reduce_add(s);
}

// e^x for softmax's shifted scores (x = score - max <= 0; positive x up to 88 also works), within
// 2 float ulp of the correctly rounded value for x >= -87; 0 below -87 and for -inf; NaN stays NaN.
// Cephes-style: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6 polynomial, 2^n by the
// exponent bits.
PAGEDCORE_VEC_INLINE float exp_shifted(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // ln 2 = kLn2Hi + kLn2Lo, kLn2Hi exact in few bits
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float c = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);  // NaN compares false: stays NaN
  const float n = (c * kLog2e + kRound) - kRound;
  const float r = (c - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.f;
  const float n_bits = n > -127.f ? (n < 128.f ? n : 127.f) : -127.f;  // NaN -> -127, harmless
  const float two_n = std::bit_cast<float>((static_cast<int32_t>(n_bits) + 127) << 23);
  return x < -87.f ? 0.f : er * two_n;
}

}  // namespace pagedcore::cpu
