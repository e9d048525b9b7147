// Host-side validation of kernel arguments, shared by the CPU and CUDA paths, so both refuse the
// same inputs with the same messages.
#include <stdexcept>
#include <string>

#include "pagedcore/kernels.h"
#include "pagedcore/supported.h"

namespace pagedcore {
namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

void check_heads(int num_heads, int num_kv_heads) {
  require(num_kv_heads > 0, "num_kv_heads must be positive, got " + std::to_string(num_kv_heads));
  require(num_heads > 0 && num_heads % num_kv_heads == 0,
          "num_heads (" + std::to_string(num_heads) + ") must be a positive multiple of num_kv_heads (" +
              std::to_string(num_kv_heads) + "); supported: any integer query heads per KV head (GQA/MQA)");
}

}  // namespace

std::string dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown dtype " + std::to_string(static_cast<int>(dtype));
}

int dtype_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

size_t paged_attention_workspace_bytes(int num_seqs, int num_heads, int head_dim, int num_splits) {
  if (num_splits <= 1) return 0;
  // Partials plus enough slack that the counter region (1/33 of the total) holds one counter per
  // (sequence, head) and the rest still holds the partials (see split_counter_region_bytes).
  const size_t partials = split_partials_bytes(num_seqs, num_heads, head_dim, num_splits);
  return partials + partials / 32 + 1024;
}

void check_write_kv_cache_args(const WriteKVCacheArgs& a) {
  check_block_size(a.block_size);
  check_head_size(a.head_dim);
  require(a.num_kv_heads > 0, "num_kv_heads must be positive");
  require(a.num_tokens >= 0, "num_tokens must be >= 0");
  require(a.num_blocks > 0, "the KV cache must hold at least one block");
  require(a.k_stride_head >= a.head_dim && a.v_stride_head >= a.head_dim,
          "k/v head stride must be at least head_dim (last dim contiguous)");
}

void check_paged_attention_args(const PagedAttentionArgs& a) {
  check_block_size(a.block_size);
  check_head_size(a.head_dim);
  check_heads(a.num_heads, a.num_kv_heads);
  require(a.num_seqs >= 0 && a.num_tokens >= 0, "num_seqs and num_tokens must be >= 0");
  require(a.num_blocks > 0, "the KV cache must hold at least one block");
  require(a.max_blocks_per_seq >= 0 && a.block_tables_stride >= a.max_blocks_per_seq,
          "block_tables row stride must be >= max_blocks_per_seq");
  require(a.num_splits >= 1 && a.num_splits <= kMaxAttentionSplits,
          "num_splits must be in [1, " + std::to_string(kMaxAttentionSplits) + "], got " +
              std::to_string(a.num_splits));
  require(a.q_stride_head >= a.head_dim && a.out_stride_head >= a.head_dim,
          "q/out head stride must be at least head_dim (last dim contiguous)");
}

}  // namespace pagedcore
