// Prefill attention over FP8 (e4m3) caches: the kernel of prefill_attention.cuh with byte tiles
// converted to the model's dtype in shared memory.
#include "prefill_attention.cuh"

namespace pagedcore::cuda {

void launch_prefill_attention_fp8(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream) {
  launch_prefill</*kFp8=*/true>(p, dtype, head_dim, stream);
}

}  // namespace pagedcore::cuda
