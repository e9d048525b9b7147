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

// sum of a[d] * b[d] for d < n, n a multiple of 16, in float32 (another order than a sequential sum):
// four independent vector accumulators, where one would wait on each add's latency.
inline float dot(const float* a, const float* b, int n) {
  Vec4 s0{}, s1{}, s2{}, s3{};
  for (int d = 0; d < n; d += 16) {
    s0 += load4(a + d) * load4(b + d);
    s1 += load4(a + d + 4) * load4(b + d + 4);
    s2 += load4(a + d + 8) * load4(b + d + 8);
    s3 += load4(a + d + 12) * load4(b + d + 12);
  }
  const Vec4 s = (s0 + s1) + (s2 + s3);
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// e^x for softmax's shifted scores (x = score - max <= 0; positive x up to 88 also works), within
// 2 float ulp of the correctly rounded value for x >= -87; 0 below -87 and for -inf; NaN stays NaN.
// Cephes-style: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6 polynomial, 2^n by the
// exponent bits.
inline float exp_shifted(float x) {
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
