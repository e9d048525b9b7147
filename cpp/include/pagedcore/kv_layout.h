// Order of the 16-byte chunks inside one row (one token of one KV head) of a CUDA KV cache.
//
// CUDA caches keep the [num_blocks, num_kv_heads, block_size, head_dim] shape, but inside each
// row the 16-byte chunks of every complete group of 8 are permuted: logical chunk c of row r sits
// at position c ^ (r % 8), where r is the row's offset in its block. A block's rows can then be
// copied into shared memory as they are (one bulk copy of the block) and still be read column-wise
// without bank conflicts: the 8 rows of an 8 x 8 tensor-core fragment hit 8 different banks.
// Chunks past the last complete group (head sizes 80 and 96) stay in place. CPU caches and FP8
// caches (whose tiles are converted to the model's dtype before the fragment reads) are plain
// (no permutation). The permutation is its own inverse.
#pragma once

#if defined(__CUDACC__)
#define PAGEDCORE_HOST_DEVICE __host__ __device__
#else
#define PAGEDCORE_HOST_DEVICE
#endif

namespace pagedcore {

// Position of logical 16-byte chunk `chunk` in row `row_in_block` of a CUDA cache row of
// `chunks_per_row` chunks (also maps a position back to its logical chunk).
PAGEDCORE_HOST_DEVICE constexpr int kv_chunk_position(int row_in_block, int chunk, int chunks_per_row) {
  return chunk < (chunks_per_row & ~7) ? (chunk ^ (row_in_block & 7)) : chunk;
}

}  // namespace pagedcore
