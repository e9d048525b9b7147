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
  std::vector<int32_t> copy_pairs;       // [num_copies, 2] (src, dst) device blocks: copy-on-write
  std::vector<int32_t> swap_out_pairs;   // [num_swap_out, 2] (device block, host block)
  std::vector<int32_t> swap_in_pairs;    // [num_swap_in, 2] (host block, device block)
  // Execution order for the runner: swap_out, swap_in, copy_pairs, then the forward pass.

  int num_samples() const { return static_cast<int>(logits_indices.size()); }

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
    copy_pairs.clear();
    swap_out_pairs.clear();
    swap_in_pairs.clear();
  }
};

}  // namespace pagedcore
