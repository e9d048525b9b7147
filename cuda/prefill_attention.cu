// Prefill attention over caches of the model's dtype (the kernel: prefill_attention.cuh); FP8
// caches go to prefill_attention_fp8.cu.
#include "prefill_attention.cuh"

namespace pagedcore::cuda {

void launch_prefill_attention(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream) {
  if (p.cache_dtype == DType::kFloat8E4M3) return launch_prefill_attention_fp8(p, dtype, head_dim, stream);
  launch_prefill</*kFp8=*/false>(p, dtype, head_dim, stream);
}

}  // namespace pagedcore::cuda
