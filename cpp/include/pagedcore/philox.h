// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the
// counter-based generator the fused sampling pass draws its noise from; the same code runs on the
// host and the device, so CPU and CUDA draw identical numbers.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PAGEDCORE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PAGEDCORE_HOST_DEVICE inline
#endif

namespace pagedcore {

struct Philox4 {
  uint32_t x[4];
};

PAGEDCORE_HOST_DEVICE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// The four 32-bit outputs of counter c under key k.
PAGEDCORE_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                            uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, c0, hi0, lo0);
    philox_mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// A uniform float in (0, 1), never 0 or 1 (so that -log(-log(u)) is finite): 23 random bits plus a
// half, exactly representable, so the largest value is 1 - 2^-24. (24 bits plus a half would round
// 2^24 - 0.5 up to 2^24, u = 1 and infinite noise: one draw in ~110 over a 151,936-token vocabulary
// picked a uniformly random token.)
PAGEDCORE_HOST_DEVICE float philox_uniform(uint32_t bits) {
  return (static_cast<float>(bits >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

}  // namespace pagedcore
