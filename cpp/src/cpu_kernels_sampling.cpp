// The fused sampling pass on the CPU (pagedcore/sampling.h): one parallel_for index per row.
#include <cmath>
#include <limits>

#include "cpu_thread_pool.h"
#include "pagedcore/philox.h"
#include "pagedcore/sampling.h"

namespace pagedcore {

void sample_tokens_cpu(const SampleTokensArgs& a) {
  check_sample_tokens_args(a);
  cpu::parallel_for(a.num_rows, [&](int64_t r) {
    const float* scores = a.scores + r * a.scores_stride;
    const float* raw = a.raw + r * a.raw_stride;
    const float inv_temperature = a.inv_temperature[r];
    const uint64_t key = static_cast<uint64_t>(a.noise[3 * r]);
    const uint32_t salt = static_cast<uint32_t>(a.noise[3 * r + 1]);
    const uint64_t offset = static_cast<uint64_t>(a.noise[3 * r + 2]);
    const int32_t* mask = a.allowed && a.allowed_rows[r] >= 0 ? a.allowed + a.allowed_rows[r] * a.allowed_stride : nullptr;
    const float negative_infinity = -std::numeric_limits<float>::infinity();
    float best = negative_infinity;
    int64_t best_id = -1;  // as CUDA: the first allowed id wins ties, -inf ones too; none (all NaN): 0
    float max = negative_infinity;
    for (int v = 0; v < a.vocab_size; ++v) max = std::fmax(max, raw[v]);
    double sum = 0.0;
    for (int v = 0; v < a.vocab_size; ++v) sum += std::exp(static_cast<double>(raw[v]) - max);
    for (int group = 0; group * 4 < a.vocab_size; ++group) {
      Philox4 bits{};
      if (inv_temperature != 0.0f) {
        bits = philox4x32_10(static_cast<uint32_t>(group), salt, static_cast<uint32_t>(offset),
                             static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(key),
                             static_cast<uint32_t>(key >> 32));
      }
      for (int lane = 0; lane < 4 && group * 4 + lane < a.vocab_size; ++lane) {
        const int v = group * 4 + lane;
        float score = scores[v];
        if (mask && !((static_cast<uint32_t>(mask[v >> 5]) >> (v & 31)) & 1u)) continue;
        if (inv_temperature != 0.0f) {
          score = score * inv_temperature - std::log(-std::log(philox_uniform(bits.x[lane])));
        }
        if (score > best || (best_id < 0 && score == best)) best = score, best_id = v;
      }
    }
    if (best_id < 0) best_id = 0;
    a.token_ids[r] = best_id;
    a.logprobs[r] = static_cast<float>(raw[best_id] - (max + std::log(sum)));
  });
}

}  // namespace pagedcore
