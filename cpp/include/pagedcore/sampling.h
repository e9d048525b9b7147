// Kernel API of the fused sampling pass: one read of each row's logits chooses its token (greedy,
// or a Gumbel-max draw at the row's temperature) and computes the token's log-probability under the
// raw logits, instead of the ~10 full passes of softmax, exponential noise, division and argmax.
//
// The noise is counter-based (Philox4x32-10, pagedcore/philox.h): row r's noise for vocabulary
// entry v is a function of (key[r], salt[r], offset[r], v) only, so a seeded sequence draws the
// same token for the same logits whatever batch it runs in, on CPU and CUDA alike. A draw takes
// argmax_v (scores[v] * inv_temperature + g_v) with g_v = -log(-log(u_v)) Gumbel noise, which picks
// v with probability softmax(scores * inv_temperature)[v]; ties go to the lower id.
#pragma once

#include <cstdint>

#include "pagedcore/kernels.h"

namespace pagedcore {

struct SampleTokensArgs {
  int num_rows;
  int vocab_size;              // columns read (<= the row strides)
  const float* scores;         // [num_rows, vocab]: what the choice reads (logits after any processing;
  int64_t scores_stride;       //   -inf = never chosen), rows scores_stride apart
  const float* raw;            // [num_rows, vocab]: the raw logits whose log-softmax gives the logprob;
  int64_t raw_stride;          //   may be scores itself
  const float* inv_temperature;  // [num_rows]: 0 = greedy (argmax of scores), else scores are scaled by it
  const int64_t* noise;        // [num_rows, 3]: Philox key, salt (low 32 bits used), offset per row
  // Optional allowed-token bitmasks (a grammar's): row r may choose only the ids whose bit is set in
  // allowed[allowed_rows[r]] (bit j of word w: id 32 w + j), or any id when allowed_rows[r] < 0.
  // Masks restrict the choice only, never the logprob's normalization. nullptr: no masks.
  const int32_t* allowed;      // [num_masks, allowed_stride]
  int64_t allowed_stride;      // words per mask, >= ceil(vocab_size / 32)
  const int32_t* allowed_rows;  // [num_rows]
  int64_t* token_ids;          // [num_rows] out
  float* logprobs;             // [num_rows] out: raw[token] - logsumexp(raw)
};

// Throws std::invalid_argument naming the limit. Shared by CPU and CUDA.
void check_sample_tokens_args(const SampleTokensArgs& args);

void sample_tokens_cpu(const SampleTokensArgs& args);
void sample_tokens_cuda(const SampleTokensArgs& args, cudaStream_t stream);

}  // namespace pagedcore
