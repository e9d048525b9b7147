// The CPU kernels' vectorizable exp against the correctly rounded value.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

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

}  // namespace
}  // namespace pagedcore::cpu
