// Chained hashing of full KV blocks for the prefix cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace pagedcore {

// Parent hash of a sequence's first block.
inline constexpr uint64_t kRootBlockHash = 0x9e3779b97f4a7c15ULL;

// Hash of one full block: H(parent block's hash, its token ids, an extra key such as a cache
// salt). Deterministic across processes (no std::hash), so it can be logged and compared.
uint64_t hash_block_tokens(uint64_t parent_hash, const int32_t* tokens, size_t num_tokens,
                           std::string_view extra_key);

}  // namespace pagedcore
