// Packing a step plan into one int32 buffer (pagedcore/step_plan.h).
#include "pagedcore/step_plan.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pagedcore {
namespace {

int64_t align4(int64_t n) { return (n + 3) / 4 * 4; }

PackedPlanLayout layout_of(int num_seqs, int num_tokens, int num_samples, int width, int num_deferred) {
  PackedPlanLayout l;
  l.num_seqs = num_seqs;
  l.num_tokens = num_tokens;
  l.num_samples = num_samples;
  l.width = width;
  l.num_deferred = num_deferred;
  int64_t at = 0;
  auto place = [&at](int64_t count) {
    const int64_t offset = at;
    at += align4(count);
    return offset;
  };
  l.input_ids = place(num_tokens);
  l.positions = place(num_tokens);
  l.slot_mapping = place(num_tokens);
  l.context_lens = place(num_seqs);
  l.query_start_loc = place(num_seqs + 1);
  l.logits_indices = place(num_samples);
  l.block_tables = place(static_cast<int64_t>(num_seqs) * width);
  l.deferred_input_rows = place(num_deferred);
  l.deferred_input_samples = place(num_deferred);
  l.size = at;
  return l;
}

}  // namespace

PackedPlanLayout packed_layout(const StepPlan& plan) {
  return layout_of(plan.num_seqs, plan.num_tokens, plan.num_samples(), plan.max_blocks_per_seq, plan.num_deferred());
}

PackedPlanLayout plan_layout(int num_seqs, int num_tokens, int num_samples, int width, int num_deferred) {
  if (num_seqs < 0 || num_tokens < num_seqs || num_samples < 0 || width < 0 || num_deferred < 0 ||
      num_deferred > num_tokens) {
    throw std::invalid_argument("plan_layout: sizes must satisfy 0 <= num_seqs <= num_tokens, num_samples >= 0, "
                                "width >= 0 and 0 <= num_deferred <= num_tokens");
  }
  return layout_of(num_seqs, num_tokens, num_samples, width, num_deferred);
}

PackedPlanLayout decode_layout(int num_seqs, int width) {
  if (num_seqs < 0 || width < 0) throw std::invalid_argument("decode_layout: num_seqs and width must be >= 0");
  // A decode row samples (one index per row) and may take its input from the previous step.
  return layout_of(num_seqs, num_seqs, num_seqs, width, num_seqs);
}

PackedPlanLayout padded_decode_layout(const StepPlan& plan, int num_seqs, int width) {
  if (plan.num_decode_seqs != plan.num_seqs || plan.num_tokens != plan.num_seqs) {
    throw std::invalid_argument("only a decode-only plan (one token per sequence) can be padded");
  }
  if (num_seqs < plan.num_seqs || width < plan.max_blocks_per_seq) {
    throw std::invalid_argument("padded layout of " + std::to_string(num_seqs) + " rows x " + std::to_string(width) +
                                " blocks cannot hold a plan of " + std::to_string(plan.num_seqs) + " x " +
                                std::to_string(plan.max_blocks_per_seq));
  }
  return decode_layout(num_seqs, width);
}

void pack_plan(const StepPlan& plan, const PackedPlanLayout& l, int32_t* dst) {
  if (plan.num_deferred() > l.num_deferred) {
    throw std::invalid_argument("pack_plan: the layout has room for " + std::to_string(l.num_deferred) +
                                " deferred inputs, the plan has " + std::to_string(plan.num_deferred()));
  }
  const int n = plan.num_tokens;
  const int s = plan.num_seqs;
  auto copy = [dst](int64_t offset, const std::vector<int32_t>& src) {
    if (!src.empty()) std::memcpy(dst + offset, src.data(), src.size() * sizeof(int32_t));
  };
  copy(l.input_ids, plan.input_ids);
  copy(l.positions, plan.positions);
  copy(l.slot_mapping, plan.slot_mapping);
  copy(l.context_lens, plan.context_lens);
  copy(l.query_start_loc, plan.query_start_loc);
  copy(l.logits_indices, plan.logits_indices);
  copy(l.deferred_input_rows, plan.deferred_input_rows);
  copy(l.deferred_input_samples, plan.deferred_input_samples);
  std::fill(dst + l.input_ids + n, dst + l.input_ids + l.num_tokens, 0);
  std::fill(dst + l.positions + n, dst + l.positions + l.num_tokens, 0);
  std::fill(dst + l.slot_mapping + n, dst + l.slot_mapping + l.num_tokens, kPaddingSlot);
  std::fill(dst + l.context_lens + s, dst + l.context_lens + l.num_seqs, 1);
  for (int row = s; row < l.num_seqs; ++row) dst[l.query_start_loc + row + 1] = n + (row - s) + 1;
  for (int i = plan.num_samples(); i < l.num_samples; ++i) dst[l.logits_indices + i] = n + (i - plan.num_samples());
  if (plan.query_start_loc.empty()) dst[l.query_start_loc] = 0;
  const int width = plan.max_blocks_per_seq;
  if (width == l.width) {
    copy(l.block_tables, plan.block_tables);
  } else {
    for (int row = 0; row < s; ++row) {
      int32_t* out = dst + l.block_tables + static_cast<int64_t>(row) * l.width;
      std::memcpy(out, plan.block_tables.data() + static_cast<int64_t>(row) * width, width * sizeof(int32_t));
      std::fill(out + width, out + l.width, 0);
    }
  }
  std::fill(dst + l.block_tables + static_cast<int64_t>(s) * l.width,
            dst + l.block_tables + static_cast<int64_t>(l.num_seqs) * l.width, 0);
}

int max_query_len(const StepPlan& plan) {
  int longest = 0;
  for (int i = 0; i < plan.num_seqs; ++i) {
    longest = std::max(longest, plan.query_start_loc[i + 1] - plan.query_start_loc[i]);
  }
  return longest;
}

int max_context_len(const StepPlan& plan) {
  return plan.context_lens.empty() ? 0 : *std::max_element(plan.context_lens.begin(), plan.context_lens.end());
}

}  // namespace pagedcore
