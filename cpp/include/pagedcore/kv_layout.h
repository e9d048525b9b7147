// Order of the 16-byte chunks inside one row (one token of one KV head) of a CUDA KV cache.
//
// CUDA caches keep the [num_blocks, num_kv_heads, block_size, head_dim] shape, but inside each
// row the 16-byte chunks of every complete group of 8 are permuted: logical chunk c of row r sits
// at position c ^ (r % 8), where r is the row's offset in its block. A block's rows can then be
// copied into shared memory as they are (one bulk copy of the block) and still be read column-wise
// without bank conflicts: the 8 rows of an 8 x 8 tensor-core fragment hit 8 different banks.
// Chunks past the last complete group (head sizes 80 and 96) stay in place. CPU caches are plain
// (no permutation). The permutation is its own inverse.
//
// FP8 caches (one byte per element, D / 16 chunks per row) follow kv_fp8_chunk_position: at head
// sizes that are multiples of 64 (the ones whose blocks are bulk-copied) complete groups of 8
// chunks are permuted as above and a trailing group of 4 (head sizes 64, 192) by (r / 2) % 4, so
// that 8 consecutive rows of one logical chunk again land in 8 different banks (a row then holds
// 4 or 12 chunks, and rows r, r + 1 share a 128-byte line); other head sizes stay plain. It is
// its own inverse too.
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

// The same for a row of an FP8 cache (`chunks_per_row` = head_dim / 16).
PAGEDCORE_HOST_DEVICE constexpr int kv_fp8_chunk_position(int row_in_block, int chunk, int chunks_per_row) {
  if (chunks_per_row % 4 != 0) return chunk;
  return chunk < (chunks_per_row & ~7) ? (chunk ^ (row_in_block & 7)) : (chunk ^ ((row_in_block >> 1) & 3));
}

}  // namespace pagedcore
