// Packing a step plan into one int32 buffer: exact offsets and values, with and without the
// padding a CUDA graph's batch needs, and the refusals.
#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "pagedcore/step_plan.h"

namespace pagedcore {
namespace {

// Three decode sequences (context 5, 17, 2), block tables 2 wide.
StepPlan decode_plan() {
  StepPlan p;
  p.num_seqs = p.num_tokens = p.num_decode_seqs = 3;
  p.max_blocks_per_seq = 2;
  p.input_ids = {11, 12, 13};
  p.positions = {4, 16, 1};
  p.slot_mapping = {36, 81, 9};
  p.block_tables = {2, kNullBlock, 4, 5, 0, kNullBlock};
  p.context_lens = {5, 17, 2};
  p.query_start_loc = {0, 1, 2, 3};
  p.logits_indices = {0, 1, 2};
  return p;
}

std::vector<int32_t> slice(const std::vector<int32_t>& buffer, int64_t offset, int64_t count) {
  return {buffer.begin() + offset, buffer.begin() + offset + count};
}

TEST(StepPlan, PackedAtItsOwnSizesEveryArrayIsCopiedAtAnAlignedOffset) {
  const StepPlan plan = decode_plan();
  const PackedPlanLayout l = packed_layout(plan);
  EXPECT_EQ(l.num_seqs, 3);
  EXPECT_EQ(l.width, 2);
  for (int64_t offset : {l.input_ids, l.positions, l.slot_mapping, l.context_lens, l.query_start_loc,
                         l.logits_indices, l.block_tables}) {
    EXPECT_EQ(offset % 4, 0);
  }
  std::vector<int32_t> buffer(l.size, -7);
  pack_plan(plan, l, buffer.data());
  EXPECT_EQ(slice(buffer, l.input_ids, 3), plan.input_ids);
  EXPECT_EQ(slice(buffer, l.positions, 3), plan.positions);
  EXPECT_EQ(slice(buffer, l.slot_mapping, 3), plan.slot_mapping);
  EXPECT_EQ(slice(buffer, l.context_lens, 3), plan.context_lens);
  EXPECT_EQ(slice(buffer, l.query_start_loc, 4), plan.query_start_loc);
  EXPECT_EQ(slice(buffer, l.logits_indices, 3), plan.logits_indices);
  EXPECT_EQ(slice(buffer, l.block_tables, 6), plan.block_tables);
  EXPECT_EQ(max_query_len(plan), 1);
  EXPECT_EQ(max_context_len(plan), 17);
}

TEST(StepPlan, PlanLayoutOfAPlansSizesIsItsPackedLayout) {
  const StepPlan plan = decode_plan();
  const PackedPlanLayout own = packed_layout(plan);
  const PackedPlanLayout rebuilt = plan_layout(plan.num_seqs, plan.num_tokens, plan.num_samples(),
                                               plan.max_blocks_per_seq, plan.num_deferred());
  EXPECT_EQ(rebuilt.size, own.size);
  EXPECT_EQ(rebuilt.block_tables, own.block_tables);
  EXPECT_EQ(rebuilt.deferred_input_samples, own.deferred_input_samples);
  EXPECT_THROW(plan_layout(4, 3, 3, 2, 0), std::invalid_argument);  // more sequences than tokens
  EXPECT_THROW(plan_layout(3, 3, 3, 2, 4), std::invalid_argument);  // more deferred inputs than tokens
  EXPECT_THROW(plan_layout(3, 3, -1, 2, 0), std::invalid_argument);
}

TEST(StepPlan, PaddedDecodeLayoutFillsHarmlessRows) {
  const StepPlan plan = decode_plan();
  const PackedPlanLayout l = padded_decode_layout(plan, 5, 4);
  const PackedPlanLayout same = decode_layout(5, 4);
  EXPECT_EQ(l.size, same.size);
  EXPECT_EQ(l.block_tables, same.block_tables);
  std::vector<int32_t> buffer(l.size, -7);
  pack_plan(plan, l, buffer.data());
  EXPECT_EQ(slice(buffer, l.input_ids, 5), (std::vector<int32_t>{11, 12, 13, 0, 0}));
  EXPECT_EQ(slice(buffer, l.positions, 5), (std::vector<int32_t>{4, 16, 1, 0, 0}));
  EXPECT_EQ(slice(buffer, l.slot_mapping, 5), (std::vector<int32_t>{36, 81, 9, kPaddingSlot, kPaddingSlot}));
  EXPECT_EQ(slice(buffer, l.context_lens, 5), (std::vector<int32_t>{5, 17, 2, 1, 1}));
  EXPECT_EQ(slice(buffer, l.query_start_loc, 6), (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(slice(buffer, l.logits_indices, 5), (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(slice(buffer, l.block_tables, 20),
            (std::vector<int32_t>{2, kNullBlock, 0, 0, 4, 5, 0, 0, 0, kNullBlock, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
}

TEST(StepPlan, OnlyADecodeOnlyPlanThatFitsIsPadded) {
  StepPlan plan = decode_plan();
  EXPECT_THROW(padded_decode_layout(plan, 2, 4), std::invalid_argument);  // fewer rows than the plan
  EXPECT_THROW(padded_decode_layout(plan, 4, 1), std::invalid_argument);  // narrower than the plan
  plan.num_decode_seqs = 2;  // the last sequence is a prefill
  EXPECT_THROW(padded_decode_layout(plan, 4, 4), std::invalid_argument);
}

}  // namespace
}  // namespace pagedcore
