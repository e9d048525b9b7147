// Decode attention over FP8 (e4m3) caches: the kernel of decode_attention.cuh with byte tiles whose
// fragments are converted in registers.
#include "decode_attention.cuh"

namespace pagedcore::cuda {

void launch_decode_attention_fp8(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream) {
  dispatch_dtype_head_dim(dtype, head_dim, [&](auto type_tag, auto head) {
    launch_decode_path<decltype(type_tag), uint8_t, decltype(head)::value>(p, stream);
    return 0;
  });
}

DecodeSlots decode_attention_slots_fp8(int head_dim) {
  // The same shared memory for either model dtype (byte tiles, a half query tile) and registers
  // within a few of each other: bfloat16's fit stands for both (it only steers the split count).
  return dispatch_dtype_head_dim(DType::kBFloat16, head_dim, [&](auto type_tag, auto head) {
    return decode_slots<decltype(type_tag), uint8_t, decltype(head)::value>();
  });
}

}  // namespace pagedcore::cuda
