// CPU versions of the fused layer kernels (pagedcore/layer_kernels.h): float32 and bfloat16,
// computed in float, one token per parallel_for index, in the instruction-set variant of the CPU
// (cpu_isa.h; every variant gives the same bits).
#include <cmath>
#include <stdexcept>
#include <string>

#include "cpu_dtype.h"
#include "cpu_isa.h"
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

// In place: row = round(weight * round(row * rsqrt(mean(row^2) + eps))). The sum of squares in a
// fixed order (16 lanes, cpu_math.h), the same in every instruction-set variant.
template <typename V, typename T>
PAGEDCORE_VEC_INLINE void rms_norm_row(T* row, const T* weight, int size, float eps) {
  using L = cpu::Lanes16<V>;
  L lanes = L::zero();
  float squares[16];
  int i = 0;
  for (; i + 16 <= size; i += 16) {
    for (int j = 0; j < 16; ++j) squares[j] = to_float(row[i + j]) * to_float(row[i + j]);
    lanes += L::load(squares);
  }
  float rest = 0.f;
  for (; i < size; ++i) rest += to_float(row[i]) * to_float(row[i]);
  const float sum_squares = cpu::reduce_add(lanes) + rest;
  const float inv_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(size) + eps);
#pragma omp simd
  for (int k = 0; k < size; ++k) {
    const float normalized = to_float(round_to<T>(to_float(row[k]) * inv_rms));
    row[k] = round_to<T>(to_float(weight[k]) * normalized);
  }
}

// One token of each kernel, as cpu::Variants kernels (cpu_isa.h): built once per instruction set.
template <typename V, typename T>
struct AddRmsNormToken {
  static PAGEDCORE_VEC_INLINE void run(const AddRMSNormArgs* a, int64_t t) {
    const T* x_row = static_cast<const T*>(a->x) + t * a->x_stride_token;
    const int h = a->hidden_size;
    T* out_row = static_cast<T*>(a->out) + t * h;
    if (a->residual != nullptr) {
      T* res_row = static_cast<T*>(a->residual) + t * h;
#pragma omp simd
      for (int i = 0; i < h; ++i) {
        res_row[i] = round_to<T>(to_float(x_row[i]) + to_float(res_row[i]));
        out_row[i] = res_row[i];
      }
    } else if (out_row != x_row) {
      for (int i = 0; i < h; ++i) out_row[i] = x_row[i];
    }
    rms_norm_row<V>(out_row, static_cast<const T*>(a->weight), h, a->eps);
  }
};

template <typename V, typename T>
struct SiluAndMulToken {
  static PAGEDCORE_VEC_INLINE void run(const SiluAndMulArgs* a, int64_t t) {
    const int n = a->intermediate_size;
    const T* gate = static_cast<const T*>(a->x) + t * a->x_stride_token;
    const T* up = gate + n;
    T* out_row = static_cast<T*>(a->out) + t * n;
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
  }
};

template <typename V, typename T>
struct QKNormRopeToken {
  static PAGEDCORE_VEC_INLINE void run(const QKNormRopeArgs* a, int64_t t) {
    const int half = a->head_dim / 2;
    const float* cos = a->cos + a->positions[t] * a->rope_stride;
    const float* sin = a->sin + a->positions[t] * a->rope_stride;
    auto apply = [&](T* row, const void* norm_weight) __attribute__((always_inline)) {
      if (norm_weight != nullptr) rms_norm_row<V>(row, static_cast<const T*>(norm_weight), a->head_dim, a->eps);
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        const float x1 = to_float(row[i]);
        const float x2 = to_float(row[i + half]);
        row[i] = round_to<T>(x1 * cos[i] - x2 * sin[i]);
        row[i + half] = round_to<T>(x2 * cos[i] + x1 * sin[i]);
      }
    };
    for (int h = 0; h < a->num_heads; ++h) {
      apply(static_cast<T*>(a->q) + t * a->q_stride_token + h * a->q_stride_head, a->q_norm_weight);
    }
    for (int h = 0; h < a->num_kv_heads; ++h) {
      apply(static_cast<T*>(a->k) + t * a->k_stride_token + h * a->k_stride_head, a->k_norm_weight);
    }
  }
};

// Runs Token<V, T>::run(&a, t) for every token, in the variant of the CPU's instruction set.
template <template <typename...> class Token, typename Args>
void for_each_token(DType dtype, const std::string& op, const Args& a) {
  dispatch_cpu(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    const auto token = cpu::Variants<Token, T>::template pick<const Args*, int64_t>(cpu::isa());
    cpu::parallel_for(a.num_tokens, [&](int64_t t) { token(&a, t); });
  });
}

}  // namespace

void add_rms_norm_cpu(const AddRMSNormArgs& a) {
  check_add_rms_norm_args(a);
  for_each_token<AddRmsNormToken>(a.dtype, "add_rms_norm", a);
}

void silu_and_mul_cpu(const SiluAndMulArgs& a) {
  check_silu_and_mul_args(a);
  for_each_token<SiluAndMulToken>(a.dtype, "silu_and_mul", a);
}

void qk_norm_rope_cpu(const QKNormRopeArgs& a) {
  check_qk_norm_rope_args(a);
  for (int t = 0; t < a.num_tokens; ++t) {
    if (a.positions[t] < 0 || a.positions[t] >= a.max_position) {
      throw std::out_of_range("positions[" + std::to_string(t) + "] = " + std::to_string(a.positions[t]) +
                              " is outside the rotary table (" + std::to_string(a.max_position) + " positions)");
    }
  }
  for_each_token<QKNormRopeToken>(a.dtype, "qk_norm_rope", a);
}

}  // namespace pagedcore
