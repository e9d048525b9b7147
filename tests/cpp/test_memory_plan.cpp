#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "pagedcore/memory_plan.h"

namespace pagedcore {
namespace {

TEST(MemoryPlan, Llama8BShapeInOneGiB) {
  // 32 layers x 8 kv heads x 128 dim x 2 bytes x 2 (K and V) = 128 KiB per token.
  MemoryPlan plan = plan_kv_memory({32, 8, 128, 2, 16}, int64_t{1} << 30);
  EXPECT_EQ(plan.bytes_per_token, 131072);
  EXPECT_EQ(plan.bytes_per_block, 131072 * 16);
  EXPECT_EQ(plan.num_blocks, 512);
  EXPECT_EQ(plan.token_capacity, 8192);
  EXPECT_EQ(plan.used_bytes, int64_t{1} << 30);
  EXPECT_EQ(plan.summary(),
            "KV cache: 512 blocks x 16 tokens = 8192 tokens, 2.0 MiB/block (128.0 KiB/token), 1.0 GiB of 1.0 GiB budget");
}

TEST(MemoryPlan, RoundsDownToWholeBlocks) {
  MemoryPlan plan = plan_kv_memory({2, 1, 64, 4, 4}, 10000);  // 4096 bytes per block
  EXPECT_EQ(plan.num_blocks, 2);
  EXPECT_EQ(plan.used_bytes, 8192);
}

TEST(MemoryPlan, BudgetBelowOneBlockNamesWhatOneBlockNeeds) {
  try {
    plan_kv_memory({32, 8, 128, 2, 16}, 1000);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("2097152 bytes"), std::string::npos) << e.what();
  }
}

TEST(MemoryPlan, RejectsBadShapes) {
  EXPECT_THROW(plan_kv_memory({0, 8, 128, 2, 16}, 1 << 30), std::invalid_argument);
  EXPECT_THROW(plan_kv_memory({32, 8, 128, 2, 24}, 1 << 30), std::invalid_argument);
  EXPECT_THROW(plan_kv_memory({32, 8, 128, 2, 16}, 0), std::invalid_argument);
}

}  // namespace
}  // namespace pagedcore
