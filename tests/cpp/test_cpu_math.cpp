// The CPU kernels' vectorizable exp against the correctly rounded value.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "cpu_math.h"

namespace pagedcore::cpu {
namespace {

TEST(CpuMath, ExpShiftedIsWithinTwoUlpOverTheSoftmaxRange) {
  double worst_ulps = 0;
  for (int i = 0; i <= 2'000'000; ++i) {
    const float x = -87.f + 87.f * static_cast<float>(i) / 2'000'000.f;  // [-87, 0]
    const double exact = std::exp(static_cast<double>(x));
    const float rounded = static_cast<float>(exact);
    const double ulp = std::nextafter(rounded, std::numeric_limits<float>::infinity()) - rounded;
    worst_ulps = std::max(worst_ulps, std::abs(exp_shifted(x) - exact) / ulp);
  }
  EXPECT_LE(worst_ulps, 2.0);
  for (const float x : {0.5f, 1.f, 10.f, 88.f}) {  // positive arguments work too
    EXPECT_NEAR(exp_shifted(x) / std::exp(x), 1.0, 1e-6) << x;
  }
}

TEST(CpuMath, ExpShiftedEdges) {
  EXPECT_EQ(exp_shifted(0.f), 1.f);
  EXPECT_EQ(exp_shifted(-87.5f), 0.f);
  EXPECT_EQ(exp_shifted(-1e30f), 0.f);
  EXPECT_EQ(exp_shifted(-std::numeric_limits<float>::infinity()), 0.f);
  EXPECT_TRUE(std::isnan(exp_shifted(std::numeric_limits<float>::quiet_NaN())));
}

TEST(CpuMath, DotMatchesAFloat64SumWithinFloat32Rounding) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (const int n : {16, 32, 64, 80, 128, 256}) {
    std::vector<float> a(n), b(n);
    for (int trial = 0; trial < 200; ++trial) {
      double exact = 0, magnitude = 0;
      for (int i = 0; i < n; ++i) {
        a[i] = normal(rng) * (trial % 2 ? 1e3f : 1.f);
        b[i] = normal(rng);
        exact += static_cast<double>(a[i]) * b[i];
        magnitude += std::abs(static_cast<double>(a[i]) * b[i]);
      }
      // n float32 products and sums: each rounding at most 2^-24 of the running magnitude.
      const float got = dot<Vec4>(a.data(), b.data(), n);
      EXPECT_LE(std::abs(got - exact), magnitude * n * 0x1p-24) << n;
      // Lanes16 of every register width computes the same lanes in the same order (compiled here
      // for the baseline, where GCC splits the wider vectors; tests/test_cpu_isa.py runs the kernels'
      // AVX2 / AVX-512 builds).
      EXPECT_EQ(std::bit_cast<uint32_t>(dot<Vec8>(a.data(), b.data(), n)), std::bit_cast<uint32_t>(got)) << n;
      EXPECT_EQ(std::bit_cast<uint32_t>(dot<Vec16>(a.data(), b.data(), n)), std::bit_cast<uint32_t>(got)) << n;
    }
  }
  const float ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  float with_nan[16] = {};
  with_nan[9] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(dot<Vec4>(ones, ones, 16), 16.f);
  EXPECT_TRUE(std::isnan(dot<Vec4>(ones, with_nan, 16)));
}

TEST(CpuMath, SumIsOneFixedOrderAtEveryWidth) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  for (const int n : {0, 1, 15, 16, 17, 100, 1000}) {
    std::vector<float> x(n);
    double exact = 0;
    for (float& v : x) {
      v = uniform(rng);
      exact += v;
    }
    const float got = sum<Vec4>(x.data(), n);
    EXPECT_LE(std::abs(got - exact), exact * n * 0x1p-24 + 1e-30) << n;
    EXPECT_EQ(std::bit_cast<uint32_t>(sum<Vec8>(x.data(), n)), std::bit_cast<uint32_t>(got)) << n;
    EXPECT_EQ(std::bit_cast<uint32_t>(sum<Vec16>(x.data(), n)), std::bit_cast<uint32_t>(got)) << n;
  }
}

}  // namespace
}  // namespace pagedcore::cpu
