// Decode attention over caches of the model's dtype (the kernel: decode_attention.cuh), and the
// host entries that pick between them and the FP8-cache kernels (decode_attention_fp8.cu).
#include "decode_attention.cuh"

namespace pagedcore::cuda {

void launch_decode_attention(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream) {
  if (p.cache_dtype == DType::kFloat8E4M3) return launch_decode_attention_fp8(p, dtype, head_dim, stream);
  dispatch_dtype_head_dim(dtype, head_dim, [&](auto type_tag, auto head) {
    using T = decltype(type_tag);
    launch_decode_path<T, T, decltype(head)::value>(p, stream);
    return 0;
  });
}

bool decode_attention_uses_bulk_copies(DType dtype, int head_dim, int block_size_log2) {
  return dispatch_dtype_head_dim(dtype, head_dim, [&](auto type_tag, auto head) {
    using T = decltype(type_tag);
    return use_bulk_path<T, T, decltype(head)::value>(block_size_log2);
  });
}

DecodeSlots decode_attention_slots(DType cache_dtype, int head_dim) {
  if (cache_dtype == DType::kFloat8E4M3) return decode_attention_slots_fp8(head_dim);
  return dispatch_dtype_head_dim(cache_dtype, head_dim, [&](auto type_tag, auto head) {
    using T = decltype(type_tag);
    return decode_slots<T, T, decltype(head)::value>();
  });
}

}  // namespace pagedcore::cuda
