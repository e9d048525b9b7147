// Closed-form KV cache memory plan: how many blocks a byte budget buys.
#pragma once

#include <cstdint>
#include <string>

namespace pagedcore {

struct KVCacheShape {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int dtype_bytes = 0;  // 2 for fp16/bf16, 4 for fp32
  int block_size = 0;
};

struct MemoryPlan {
  KVCacheShape shape;
  int64_t budget_bytes = 0;
  int64_t bytes_per_token = 0;  // K and V over all layers
  int64_t bytes_per_block = 0;  // 2 x layers x kv_heads x head_dim x dtype_bytes x block_size
  int64_t num_blocks = 0;
  int64_t token_capacity = 0;   // num_blocks x block_size
  int64_t used_bytes = 0;       // num_blocks x bytes_per_block

  // e.g. "KV cache: 1024 blocks x 16 tokens = 16384 tokens, 48.0 KiB/token, 768.0 MiB of 1.0 GiB"
  std::string summary() const;
};

// Throws std::invalid_argument for a non-positive field, an unsupported block size, or a budget
// too small for a single block (naming the bytes one block needs).
MemoryPlan plan_kv_memory(const KVCacheShape& shape, int64_t budget_bytes);

// "1.5 GiB" style rendering used in messages.
std::string format_bytes(int64_t bytes);

}  // namespace pagedcore
