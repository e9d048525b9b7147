// CPU versions of the fused layer kernels (pagedcore/layer_kernels.h): float32 and bfloat16,
// computed in float, one token per parallel_for index.
#include <cmath>
#include <stdexcept>
#include <string>

#include "cpu_dtype.h"
#include "cpu_math.h"
#include "cpu_thread_pool.h"
#include "pagedcore/layer_kernels.h"
#include "pagedcore/supported.h"

namespace pagedcore {
namespace {

using cpu::BFloat16;
using cpu::from_float;
using cpu::to_float;

template <typename T>
T round_to(float x) {
  return from_float<T>(x);
}

// Calls fn(T{}) for the CPU element type of `dtype`.
template <typename Fn>
void dispatch_cpu(DType dtype, const std::string& op, Fn&& fn) {
  check_cpu_dtype(dtype, op);
  if (dtype == DType::kFloat32) fn(float{});
  else fn(BFloat16{});
}

// In place: row = round(weight * round(row * rsqrt(mean(row^2) + eps))).
template <typename T>
void rms_norm_row(T* row, const T* weight, int size, float eps) {
  float sum_squares = 0.0f;
#pragma omp simd reduction(+ : sum_squares)
  for (int i = 0; i < size; ++i) sum_squares += to_float(row[i]) * to_float(row[i]);
  const float inv_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(size) + eps);
  for (int i = 0; i < size; ++i) {
    const float normalized = to_float(round_to<T>(to_float(row[i]) * inv_rms));
    row[i] = round_to<T>(to_float(weight[i]) * normalized);
  }
}

}  // namespace

void add_rms_norm_cpu(const AddRMSNormArgs& a) {
  check_add_rms_norm_args(a);
  dispatch_cpu(a.dtype, "add_rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a.x);
    T* residual = static_cast<T*>(a.residual);
    T* out = static_cast<T*>(a.out);
    const T* weight = static_cast<const T*>(a.weight);
    const int h = a.hidden_size;
    cpu::parallel_for(a.num_tokens, [&](int64_t t) {
      const T* x_row = x + t * a.x_stride_token;
      T* out_row = out + t * h;
      if (residual != nullptr) {
        T* res_row = residual + t * h;
        for (int i = 0; i < h; ++i) res_row[i] = round_to<T>(to_float(x_row[i]) + to_float(res_row[i]));
        for (int i = 0; i < h; ++i) out_row[i] = res_row[i];
      } else if (out_row != x_row) {
        for (int i = 0; i < h; ++i) out_row[i] = x_row[i];
      }
      rms_norm_row(out_row, weight, h, a.eps);
    });
  });
}

void silu_and_mul_cpu(const SiluAndMulArgs& a) {
  check_silu_and_mul_args(a);
  dispatch_cpu(a.dtype, "silu_and_mul", [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a.x);
    T* out = static_cast<T*>(a.out);
    const int n = a.intermediate_size;
    cpu::parallel_for(a.num_tokens, [&](int64_t t) {
      const T* gate = x + t * a.x_stride_token;
      const T* up = gate + n;
      T* out_row = out + t * n;
      // silu(g) = g * sigmoid(g), sigmoid from e = exp(-|g|) <= 1 (no overflow; cpu_math.h's exp
      // vectorizes where std::exp is a call per element).
#pragma omp simd
      for (int i = 0; i < n; ++i) {
        const float g = to_float(gate[i]);
        const float e = cpu::exp_shifted(-std::fabs(g));
        const float sigmoid = (g >= 0.0f ? 1.0f : e) / (1.0f + e);
        const float activated = to_float(round_to<T>(g * sigmoid));
        out_row[i] = round_to<T>(activated * to_float(up[i]));
      }
    });
  });
}

void qk_norm_rope_cpu(const QKNormRopeArgs& a) {
  check_qk_norm_rope_args(a);
  for (int t = 0; t < a.num_tokens; ++t) {
    if (a.positions[t] < 0 || a.positions[t] >= a.max_position) {
      throw std::out_of_range("positions[" + std::to_string(t) + "] = " + std::to_string(a.positions[t]) +
                              " is outside the rotary table (" + std::to_string(a.max_position) + " positions)");
    }
  }
  dispatch_cpu(a.dtype, "qk_norm_rope", [&](auto tag) {
    using T = decltype(tag);
    const int half = a.head_dim / 2;
    cpu::parallel_for(a.num_tokens, [&](int64_t t) {
      const float* cos = a.cos + a.positions[t] * a.rope_stride;
      const float* sin = a.sin + a.positions[t] * a.rope_stride;
      auto apply = [&](T* row, const void* norm_weight) {
        if (norm_weight != nullptr) rms_norm_row(row, static_cast<const T*>(norm_weight), a.head_dim, a.eps);
        for (int i = 0; i < half; ++i) {
          const float x1 = to_float(row[i]);
          const float x2 = to_float(row[i + half]);
          row[i] = round_to<T>(x1 * cos[i] - x2 * sin[i]);
          row[i + half] = round_to<T>(x2 * cos[i] + x1 * sin[i]);
        }
      };
      for (int h = 0; h < a.num_heads; ++h) {
        apply(static_cast<T*>(a.q) + t * a.q_stride_token + h * a.q_stride_head, a.q_norm_weight);
      }
      for (int h = 0; h < a.num_kv_heads; ++h) {
        apply(static_cast<T*>(a.k) + t * a.k_stride_token + h * a.k_stride_head, a.k_norm_weight);
      }
    });
  });
}

}  // namespace pagedcore
