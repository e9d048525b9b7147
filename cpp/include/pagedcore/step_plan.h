// The flat description of one model step, produced by Scheduler::step(). Every array is a
// contiguous int32 buffer (row-major) so it can be handed to Python and the kernels without copies.
#pragma once

#include <cstdint>
#include <vector>

#include "pagedcore/types.h"

namespace pagedcore {

struct StepPlan {
  int num_seqs = 0;            // sequences with tokens this step (decodes first, then prefills)
  int num_tokens = 0;          // total tokens computed this step (0 = nothing to run)
  int num_decode_seqs = 0;     // the first num_decode_seqs sequences have exactly one query token
  int max_blocks_per_seq = 0;  // width of block_tables

  std::vector<int32_t> input_ids;        // [num_tokens] token id of each computed token
  std::vector<int32_t> positions;        // [num_tokens] position of each token in its sequence
  std::vector<int32_t> slot_mapping;     // [num_tokens] cache slot = block * block_size + offset;
                                         //   kPaddingSlot (-1) for padding (written by callers that pad)
  std::vector<int32_t> block_tables;     // [num_seqs, max_blocks_per_seq], rows padded with kNullBlock
  std::vector<int32_t> context_lens;     // [num_seqs] tokens in the cache after this step, new ones included
  std::vector<int32_t> query_start_loc;  // [num_seqs + 1] first token row of each sequence; last = num_tokens
  std::vector<int64_t> seq_request_ids;  // [num_seqs] request of each sequence row
  std::vector<int32_t> logits_indices;   // [num_samples] token row whose logits are sampled
  std::vector<int64_t> sample_request_ids;  // [num_samples] request of each sampled row
  std::vector<int32_t> sample_seq_indices;  // [num_samples] which of the request's n sequences
  // Rows whose input id was sampled by the previous, still uncommitted step (the overlapped loop):
  // input_ids[deferred_input_rows[i]] = that step's sampled token deferred_input_samples[i]; the
  // plan's input_ids hold 0 there until the runner writes the token on the device.
  std::vector<int32_t> deferred_input_rows;     // [num_deferred] token rows of this plan
  std::vector<int32_t> deferred_input_samples;  // [num_deferred] sample rows of the previous plan
  std::vector<int32_t> copy_pairs;       // [num_copies, 2] (src, dst) device blocks: copy-on-write
  std::vector<int32_t> swap_out_pairs;   // [num_swap_out, 2] (device block, host block)
  std::vector<int32_t> swap_in_pairs;    // [num_swap_in, 2] (host block, device block)
  // Execution order for the runner: swap_out, swap_in, copy_pairs, then the forward pass.

  int num_samples() const { return static_cast<int>(logits_indices.size()); }
  int num_deferred() const { return static_cast<int>(deferred_input_rows.size()); }

  void clear() {
    num_seqs = num_tokens = num_decode_seqs = max_blocks_per_seq = 0;
    input_ids.clear();
    positions.clear();
    slot_mapping.clear();
    block_tables.clear();
    context_lens.clear();
    query_start_loc.clear();
    seq_request_ids.clear();
    logits_indices.clear();
    sample_request_ids.clear();
    sample_seq_indices.clear();
    deferred_input_rows.clear();
    deferred_input_samples.clear();
    copy_pairs.clear();
    swap_out_pairs.clear();
    swap_in_pairs.clear();
  }
};

// Where the arrays the forward pass reads sit in one packed int32 buffer, so that a step moves its
// plan to the device in a single host-to-device copy. Offsets are in int32 elements, each a
// multiple of 4 (16-byte aligned). The packed sizes may exceed the plan's: a decode-only plan can
// be padded to a CUDA graph's batch (`num_seqs` rows, each sampled) and block-table width, so the
// offsets depend only on that batch and width.
struct PackedPlanLayout {
  int num_seqs = 0;     // rows of context_lens / block_tables (>= the plan's)
  int num_tokens = 0;   // rows of input_ids / positions / slot_mapping
  int num_samples = 0;  // entries of logits_indices
  int width = 0;        // block_tables columns (>= the plan's max_blocks_per_seq)
  int num_deferred = 0; // room for deferred-input entries (the plan's own count is plan.num_deferred())
  int64_t input_ids = 0;        // [num_tokens]
  int64_t positions = 0;        // [num_tokens]
  int64_t slot_mapping = 0;     // [num_tokens]; padding rows kPaddingSlot (write nothing)
  int64_t context_lens = 0;     // [num_seqs]; padding rows 1 (attend to one slot of block 0)
  int64_t query_start_loc = 0;  // [num_seqs + 1]; padding rows one token each
  int64_t logits_indices = 0;   // [num_samples]; padding entries the padding rows
  int64_t block_tables = 0;     // [num_seqs, width]; padding entries block 0 (read only by padding rows)
  int64_t deferred_input_rows = 0;     // [num_deferred]; only the plan's first entries are written
  int64_t deferred_input_samples = 0;  // [num_deferred]
  int64_t size = 0;             // int32 elements of the whole buffer
};

// The plan's own sizes (no padding).
PackedPlanLayout packed_layout(const StepPlan& plan);
// The layout of a plan with these sizes (what packed_layout gives it): how a tensor-parallel worker
// reads the packed plan the driver sends.
PackedPlanLayout plan_layout(int num_seqs, int num_tokens, int num_samples, int width, int num_deferred);
// The layout of any decode-only plan padded to `num_seqs` rows and `width` columns.
PackedPlanLayout decode_layout(int num_seqs, int width);
// Padded to `num_seqs` rows and `width` columns; throws std::invalid_argument unless the plan is
// decode-only, fits, and num_seqs / width are at least the plan's.
PackedPlanLayout padded_decode_layout(const StepPlan& plan, int num_seqs, int width);
// Writes the plan's arrays at the layout's offsets of dst ([layout.size] int32), padding included.
void pack_plan(const StepPlan& plan, const PackedPlanLayout& layout, int32_t* dst);

// Host-side scalars the kernels' launch configuration needs, computed once per step.
int max_query_len(const StepPlan& plan);    // 1 = decode only, 0 = empty plan
int max_context_len(const StepPlan& plan);  // longest context_lens entry (0 = empty plan)

}  // namespace pagedcore
