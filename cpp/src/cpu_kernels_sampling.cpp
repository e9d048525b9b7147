// The fused sampling pass on the CPU (pagedcore/sampling.h): one parallel_for index per row.
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu_math.h"
#include "cpu_thread_pool.h"
#include "pagedcore/philox.h"
#include "pagedcore/sampling.h"

namespace pagedcore {
namespace {

constexpr int kChunk = 256;  // values whose exponentials are summed in float before the double total

// The largest of x[0..n), NaN ignored (as std::fmax); -inf when there is none. 16 lanes at a time.
float row_max(const float* x, int n) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  cpu::Vec4 m[4] = {cpu::broadcast4(kNegInf), cpu::broadcast4(kNegInf), cpu::broadcast4(kNegInf),
                    cpu::broadcast4(kNegInf)};
  int v = 0;
  for (; v + 16 <= n; v += 16) {
    for (int k = 0; k < 4; ++k) {
      const cpu::Vec4 x4 = cpu::load4(x + v + 4 * k);
      m[k] = x4 > m[k] ? x4 : m[k];  // a NaN lane compares false: ignored
    }
  }
  float best = kNegInf;
  for (const cpu::Vec4& mk : m) {
    for (int lane = 0; lane < 4; ++lane) best = std::fmax(best, mk[lane]);
  }
  for (; v < n; ++v) best = std::fmax(best, x[v]);
  return best;
}

// sum of e^(x[v] - max) over v < n: the exponentials by cpu::exp_shifted (2 float ulp), summed in
// float within chunks of kChunk (16 lanes, 16 terms each) and in double across them. (A double
// std::exp per vocabulary entry took 5 ms a step for 32 rows of 49,152, 3% of W5's time.)
double sum_exp_shifted(const float* x, int n, float max) {
  double total = 0.0;
  float e[kChunk];
  for (int begin = 0; begin < n; begin += kChunk) {
    const int count = std::min(kChunk, n - begin);
    for (int i = 0; i < count; ++i) e[i] = cpu::exp_shifted(x[begin + i] - max);
    cpu::Vec4 s[4] = {};
    int i = 0;
    for (; i + 16 <= count; i += 16) {
      for (int k = 0; k < 4; ++k) s[k] += cpu::load4(e + i + 4 * k);
    }
    const cpu::Vec4 s4 = (s[0] + s[1]) + (s[2] + s[3]);
    double chunk = (static_cast<double>(s4[0]) + s4[1]) + (static_cast<double>(s4[2]) + s4[3]);
    for (; i < count; ++i) chunk += e[i];
    total += chunk;
  }
  return total;
}

}  // namespace

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
    const float max = row_max(raw, a.vocab_size);
    const double sum = sum_exp_shifted(raw, a.vocab_size, max);
    if (inv_temperature == 0.0f && !mask) {
      // Greedy over every id: the first one holding the largest score (-inf ones too; none: 0).
      const float largest = scores == raw ? max : row_max(scores, a.vocab_size);
      int v = 0;
      while (v < a.vocab_size && !(scores[v] == largest)) ++v;
      best_id = v < a.vocab_size ? v : 0;
      a.token_ids[r] = best_id;
      a.logprobs[r] = static_cast<float>(raw[best_id] - (max + std::log(sum)));
      return;
    }
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
