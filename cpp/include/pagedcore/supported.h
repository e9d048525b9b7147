// The one dispatch table of what pagedcore supports. The block pool validates block sizes
// against it and the kernels dispatch (and refuse) against it, so the two can never disagree.
#pragma once

#include <array>
#include <string>

namespace pagedcore {

// Token slots per KV block: powers of two. Kernels take the block size at run time
// (shift/mask), so every entry here is supported by every kernel.
inline constexpr std::array<int, 9> kSupportedBlockSizes = {1, 2, 4, 8, 16, 32, 64, 128, 256};

// Attention head sizes the kernels are compiled for.
inline constexpr std::array<int, 5> kSupportedHeadSizes = {64, 80, 96, 128, 256};

bool is_supported_block_size(int block_size);
bool is_supported_head_size(int head_size);

// "1, 2, 4, ..." for error messages.
std::string supported_block_sizes_string();
std::string supported_head_sizes_string();

// Throws std::invalid_argument naming the allowed values.
void check_block_size(int block_size);
void check_head_size(int head_size);

}  // namespace pagedcore
