// The CUDA entry points of a library built without CUDA: each refuses with one clear message.
#ifndef PAGEDCORE_WITH_CUDA

#include <stdexcept>

#include "pagedcore/kernels.h"
#include "pagedcore/layer_kernels.h"
#include "pagedcore/sampling.h"

namespace pagedcore {
namespace {

[[noreturn]] void no_cuda() {
  throw std::runtime_error("pagedcore was built without CUDA; rebuild with nvcc on PATH (CUDA tensors need it) "
                           "or use CPU tensors");
}

}  // namespace

void write_kv_cache_cuda(const WriteKVCacheArgs&, cudaStream_t) { no_cuda(); }
void paged_attention_cuda(const AttentionParams&, cudaStream_t) { no_cuda(); }
void copy_blocks_cuda(void* const*, int, int64_t, const int32_t*, int, cudaStream_t) { no_cuda(); }
void swap_blocks_cuda(void* const*, void* const*, int, int64_t, const int32_t*, int, cudaStream_t) { no_cuda(); }
int cuda_recommended_num_splits(int, int, int, int, DType, int) { no_cuda(); }
void check_cuda_device(int) { no_cuda(); }
std::string cuda_decode_attention_path(DType, int, int) { no_cuda(); }
void add_rms_norm_cuda(const AddRMSNormArgs&, cudaStream_t) { no_cuda(); }
void silu_and_mul_cuda(const SiluAndMulArgs&, cudaStream_t) { no_cuda(); }
void qk_norm_rope_cuda(const QKNormRopeArgs&, cudaStream_t) { no_cuda(); }
void sample_tokens_cuda(const SampleTokensArgs&, cudaStream_t) { no_cuda(); }
std::string cuda_build_architectures() { return ""; }

}  // namespace pagedcore

#endif  // PAGEDCORE_WITH_CUDA
