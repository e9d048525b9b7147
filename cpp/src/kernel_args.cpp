// Host-side validation of kernel arguments, shared by the CPU and CUDA paths, so both refuse the
// same inputs with the same messages.
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "pagedcore/kernels.h"
#include "pagedcore/layer_kernels.h"
#include "pagedcore/sampling.h"
#include "pagedcore/supported.h"

namespace pagedcore {
namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

void check_heads(int num_heads, int num_kv_heads) {
  require(num_kv_heads > 0, "num_kv_heads must be positive, got " + std::to_string(num_kv_heads));
  require(num_heads > 0 && num_heads % num_kv_heads == 0,
          "num_heads (" + std::to_string(num_heads) + ") must be a positive multiple of num_kv_heads (" +
              std::to_string(num_kv_heads) + "); supported: any integer query heads per KV head (GQA/MQA)");
}

}  // namespace

std::string dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat8E4M3: return "float8_e4m3fn";
  }
  return "unknown dtype " + std::to_string(static_cast<int>(dtype));
}

int dtype_bytes(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat8E4M3: return 1;
    default: return 2;
  }
}

size_t paged_attention_workspace_bytes(int num_seqs, int num_heads, int head_dim, int num_splits) {
  if (num_splits <= 1) return 0;
  // Partials plus enough slack that the counter region (1/33 of the total) holds one counter per
  // (sequence, head) and the rest still holds the partials (see split_counter_region_bytes).
  const size_t partials = split_partials_bytes(num_seqs, num_heads, head_dim, num_splits);
  return partials + partials / 32 + 1024;
}

void check_cache_dtype(DType dtype, DType cache_dtype, const std::string& op) {
  if (cache_dtype == dtype) return;
  require(cache_dtype == DType::kFloat8E4M3,
          op + ": the KV cache holds " + dtype_name(dtype) + " (the model's dtype) or float8_e4m3fn, got " +
              dtype_name(cache_dtype));
}

void check_kv_scales(DType cache_dtype, float k_scale, float v_scale) {
  if (cache_dtype == DType::kFloat8E4M3) {
    require(std::isfinite(k_scale) && std::isfinite(v_scale) && k_scale > 0 && v_scale > 0,
            "FP8 KV cache scales must be positive and finite, got k_scale " + std::to_string(k_scale) +
                ", v_scale " + std::to_string(v_scale));
  } else {
    require(k_scale == 1.0f && v_scale == 1.0f, "k_scale / v_scale apply to FP8 KV caches only; this cache holds " +
                                                    dtype_name(cache_dtype));
  }
}

void check_write_kv_cache_args(const WriteKVCacheArgs& a) {
  check_block_size(a.block_size);
  check_head_size(a.head_dim);
  require(a.num_kv_heads > 0, "num_kv_heads must be positive");
  require(a.num_tokens >= 0, "num_tokens must be >= 0");
  require(a.num_blocks > 0, "the KV cache must hold at least one block");
  require(a.k_stride_head >= a.head_dim && a.v_stride_head >= a.head_dim,
          "k/v head stride must be at least head_dim (last dim contiguous)");
  check_kv_scales(a.cache_dtype, a.k_scale, a.v_scale);
}

// ---- AttentionPlan ----------------------------------------------------------------------------------
namespace {

int log2_exact(int x) {
  int n = 0;
  while ((1 << n) < x) ++n;
  return n;
}

}  // namespace

AttentionPlan::AttentionPlan(const AttentionStep& step, bool cuda) : cuda_(cuda) {
  AttentionStep& a = params_;
  a = step;
  check_block_size(a.block_size);
  check_head_size(a.head_dim);
  check_heads(a.num_heads, a.num_kv_heads);
  if (cuda) check_cuda_dtype(a.dtype, "paged_attention");
  else check_cpu_dtype(a.dtype, "paged_attention");
  check_cache_dtype(a.dtype, a.cache_dtype, "paged_attention");
  require(a.num_seqs >= 0 && a.num_tokens >= 0, "num_seqs and num_tokens must be >= 0");
  require(a.num_blocks > 0, "the KV cache must hold at least one block");
  require(a.max_blocks_per_seq >= 0 && a.block_tables_stride >= a.max_blocks_per_seq,
          "block_tables row stride must be >= max_blocks_per_seq");
  require(a.max_query_len >= 0 && a.max_context_len >= 0, "max_query_len and max_context_len must be >= 0");
  require(a.num_splits >= 0 && a.num_splits <= kMaxAttentionSplits,
          "num_splits must be in [1, " + std::to_string(kMaxAttentionSplits) + "] (0: the plan picks), got " +
              std::to_string(a.num_splits));
  params_.group_size = a.num_heads / a.num_kv_heads;
  params_.block_size_log2 = log2_exact(a.block_size);
  params_.scale_log2 = a.scale * 1.4426950408889634f;
  params_.prefill_takes_decode_rows = cuda && params_.group_size > kDecodeMaxGroupSize;
  if (!cuda) {
    a.num_splits = 1;  // the CPU kernel does not split keys
    check_attention_batch_cpu(params_);
    return;
  }
  if (params_.prefill_takes_decode_rows) a.num_splits = 1;
  else if (a.num_splits == 0) {
    a.num_splits = cuda_recommended_num_splits(a.num_seqs, a.num_kv_heads, a.num_heads, a.head_dim, a.cache_dtype,
                                               a.max_context_len);
  }
  if (a.num_splits > 1) {
    const size_t need = paged_attention_workspace_bytes(a.num_seqs, a.num_heads, a.head_dim, a.num_splits);
    const size_t counters = split_counter_region_bytes(a.workspace_bytes);
    const size_t partials = split_partials_bytes(a.num_seqs, a.num_heads, a.head_dim, a.num_splits);
    require(a.workspace != nullptr && counters >= static_cast<size_t>(a.num_seqs) * a.num_kv_heads * sizeof(int32_t) &&
                a.workspace_bytes - counters >= partials,
            "paged_attention with num_splits=" + std::to_string(a.num_splits) + " needs a " + std::to_string(need) +
                "-byte workspace (paged_attention_workspace_bytes), got " +
                std::to_string(a.workspace == nullptr ? 0 : a.workspace_bytes));
    require(reinterpret_cast<uintptr_t>(a.workspace) % 16 == 0, "paged_attention workspace must be 16-byte aligned");
    params_.split_counters = static_cast<int*>(a.workspace);
    params_.partial_out = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + counters);
    params_.partial_lse = params_.partial_out + static_cast<size_t>(a.num_splits) * a.num_seqs * a.num_heads * a.head_dim;
  }
}

void AttentionPlan::run(const AttentionLayer& layer, cudaStream_t stream) const {
  AttentionParams p = params_;
  static_cast<AttentionLayer&>(p) = layer;
  require(p.q_stride_head >= p.head_dim && p.out_stride_head >= p.head_dim,
          "q/out head stride must be at least head_dim (last dim contiguous)");
  check_kv_scales(p.cache_dtype, p.k_scale, p.v_scale);
  if (cuda_) {
    paged_attention_cuda(p, stream);
  } else {
    // The step's arrays may have been refilled since the plan was made (a plan runs over buffers
    // whose contents change): the CPU reads them, so it checks them again, as cheaply as it reads them.
    check_attention_batch_cpu(p);
    paged_attention_cpu(p);
  }
}

// ---- layer kernels (pagedcore/layer_kernels.h) ------------------------------------------------------
void check_add_rms_norm_args(const AddRMSNormArgs& a) {
  require(a.num_tokens >= 0, "num_tokens must be >= 0");
  require(a.hidden_size > 0, "hidden_size must be positive, got " + std::to_string(a.hidden_size));
  require(a.x_stride_token >= a.hidden_size, "x's row stride must be at least hidden_size (rows contiguous)");
  require(a.weight != nullptr, "add_rms_norm needs a weight");
  require(a.eps >= 0.0f, "eps must be >= 0");
}

void check_silu_and_mul_args(const SiluAndMulArgs& a) {
  require(a.num_tokens >= 0, "num_tokens must be >= 0");
  require(a.intermediate_size > 0, "intermediate_size must be positive, got " + std::to_string(a.intermediate_size));
  require(a.x_stride_token >= 2 * a.intermediate_size,
          "x's row stride must be at least 2 * intermediate_size (gate then up, contiguous)");
}

void check_qk_norm_rope_args(const QKNormRopeArgs& a) {
  require(a.num_tokens >= 0, "num_tokens must be >= 0");
  require(a.num_heads > 0 && a.num_kv_heads > 0, "num_heads and num_kv_heads must be positive");
  require(a.head_dim > 0 && a.head_dim % 2 == 0 && a.head_dim <= kMaxRopeHeadDim,
          "rotary embedding needs an even head_dim of at most " + std::to_string(kMaxRopeHeadDim) + ", got " +
              std::to_string(a.head_dim));
  require(a.q_stride_head >= a.head_dim && a.k_stride_head >= a.head_dim,
          "q/k head stride must be at least head_dim (last dim contiguous)");
  require(a.rope_stride >= a.head_dim / 2, "the cos/sin tables need at least head_dim / 2 columns");
  require(a.max_position > 0, "the cos/sin tables must hold at least one position");
  require((a.q_norm_weight == nullptr) == (a.k_norm_weight == nullptr),
          "q and k norms come together (Qwen3's qk-norm): give both weights or neither");
  require(a.eps >= 0.0f, "eps must be >= 0");
}

void check_sample_tokens_args(const SampleTokensArgs& a) {
  require(a.num_rows >= 0, "sample_tokens: num_rows must be >= 0, got " + std::to_string(a.num_rows));
  require(a.vocab_size > 0, "sample_tokens: vocab_size must be positive, got " + std::to_string(a.vocab_size));
  require(a.scores_stride >= a.vocab_size && a.raw_stride >= a.vocab_size,
          "sample_tokens: row strides (" + std::to_string(a.scores_stride) + ", " + std::to_string(a.raw_stride) +
              ") must be >= vocab_size " + std::to_string(a.vocab_size));
  require(a.num_rows == 0 || (a.scores && a.raw && a.inv_temperature && a.noise && a.token_ids && a.logprobs),
          "sample_tokens: a pointer is null");
  require(!a.allowed || (a.allowed_rows && a.allowed_stride >= (a.vocab_size + 31) / 32),
          "sample_tokens: allowed masks need allowed_rows and at least ceil(vocab_size / 32) = " +
              std::to_string((a.vocab_size + 31) / 32) + " words per mask, got " + std::to_string(a.allowed_stride));
}

}  // namespace pagedcore
