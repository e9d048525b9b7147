// Element types of the CPU kernels: float32 and bfloat16 (stored as uint16_t, computed in float), and
// float8 e4m3 (FP8 KV caches: stored as its byte, read through a table).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace pagedcore::cpu {

struct BFloat16 {
  uint16_t bits;
};

inline float to_float(float x) { return x; }
inline float to_float(BFloat16 x) {
  const uint32_t wide = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

template <typename T>
T from_float(float x);
template <>
inline float from_float<float>(float x) { return x; }
template <>
inline BFloat16 from_float<BFloat16>(float x) {  // round to nearest even, NaN kept NaN
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{static_cast<uint16_t>(u >> 16)};
}

// float8_e4m3fn: 4 exponent bits (bias 7), 3 mantissa bits, no infinities, largest finite 448.
struct Float8E4M3 {
  uint8_t bits;
};
inline constexpr float kFloat8E4M3Max = 448.0f;

inline float e4m3_value(uint8_t bits) {
  const int exponent = (bits >> 3) & 0xf, mantissa = bits & 0x7;
  float magnitude;
  if (exponent == 0xf && mantissa == 0x7) magnitude = NAN;
  else if (exponent == 0) magnitude = std::ldexp(static_cast<float>(mantissa), -9);  // subnormal: m * 2^-9
  else magnitude = std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
  return (bits & 0x80) ? -magnitude : magnitude;
}

inline float to_float(Float8E4M3 x) {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int b = 0; b < 256; ++b) t[b] = e4m3_value(static_cast<uint8_t>(b));
    return t;
  }();
  return table[x.bits];
}

// Round to nearest even, saturated to +-448 (infinities too); NaN stays NaN (torch's clamp-then-convert).
template <>
inline Float8E4M3 from_float<Float8E4M3>(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  if (std::isnan(x)) return Float8E4M3{static_cast<uint8_t>(sign | 0x7f)};
  const float a = std::min(std::fabs(x), kFloat8E4M3Max);
  if (a < 0.015625f) {  // below 2^-6: subnormal, a multiple of 2^-9 (8 is the smallest normal, bits 0x08)
    return Float8E4M3{static_cast<uint8_t>(sign | static_cast<uint8_t>(std::nearbyint(std::ldexp(a, 9))))};
  }
  int exponent;
  const float fraction = std::frexp(a, &exponent);  // a = fraction * 2^exponent, fraction in [0.5, 1)
  int mantissa = static_cast<int>(std::nearbyint((fraction * 2.0f - 1.0f) * 8.0f));
  int biased = exponent - 1 + 7;
  if (mantissa == 8) {  // rounded up into the next binade
    mantissa = 0;
    ++biased;
  }
  return Float8E4M3{static_cast<uint8_t>(sign | biased << 3 | mantissa)};
}

}  // namespace pagedcore::cpu
