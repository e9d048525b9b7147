// Parameters shared by the paged attention kernels (decode with its split merge, prefill) and their
// launchers. Host code fills it once per call from PagedAttentionArgs.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "pagedcore/kernels.h"

namespace pagedcore::cuda {

struct AttentionKernelParams {
  const void* q;                   // [num_tokens, num_heads, head_dim], last dim contiguous
  int64_t q_stride_token;
  int64_t q_stride_head;
  const void* k_cache;             // [num_blocks, num_kv_heads, block_size, head_dim]
  const void* v_cache;             // [num_blocks, num_kv_heads, block_size, head_dim]
  const int32_t* block_tables;     // [num_seqs, max_blocks_per_seq] with row stride below
  int64_t block_tables_stride;
  const int32_t* context_lens;     // [num_seqs]
  const int32_t* query_start_loc;  // [num_seqs + 1]
  void* out;                       // [num_tokens, num_heads, head_dim], last dim contiguous
  int64_t out_stride_token;
  int64_t out_stride_head;
  float* partial_out;              // [num_splits, num_seqs, num_heads, head_dim] (split-KV only)
  float* partial_lse;              // [num_splits, num_seqs, num_heads], log2 domain (split-KV only)
  int* split_counters;             // [num_seqs, num_kv_heads] splits finished; zero between launches
  int num_seqs;
  int num_tokens;
  int num_heads;
  int num_kv_heads;
  int group_size;                  // num_heads / num_kv_heads
  int block_size_log2;             // block_size = 1 << block_size_log2
  int num_splits;
  float scale_log2;                // softmax scale * log2(e): scores go through exp2
  bool prefill_takes_decode_rows;  // group_size > 16: the prefill kernel also runs 1-token rows
};

// Query heads per KV head the decode kernel takes (its warps hold 16 rows); larger groups run
// through the prefill kernel.
inline constexpr int kDecodeMaxGroupSize = 16;
// Query rows (token x head pairs) per prefill CTA.
inline constexpr int kPrefillRowsPerCta = 64;

void launch_decode_attention(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream);
void launch_prefill_attention(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream);
// Decode CTAs resident on the current device at once for launches over blocks of 8+ tokens: the
// narrow variant (4 warps, fewer where shared memory is small), and the 8-warp one that a launch
// takes when its whole grid fits in one wave of those (wide = 0: none fits this device).
struct DecodeSlots {
  int64_t narrow;
  int64_t wide;
};
DecodeSlots decode_attention_slots(DType dtype, int head_dim);
// Whether decode launches of this shape take the Hopper path (bulk copies) on the current device.
bool decode_attention_uses_bulk_copies(DType dtype, int head_dim, int block_size_log2);

}  // namespace pagedcore::cuda
