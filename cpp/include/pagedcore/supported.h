// The one dispatch table of what pagedcore supports. The block pool validates block sizes
// against it, the kernels dispatch (and refuse) against it and the bindings export it to Python,
// so none of them can disagree.
#pragma once

#include <array>
#include <string>

#include "pagedcore/kernels.h"

namespace pagedcore {

// Token slots per KV block: powers of two. Kernels take the block size at run time
// (shift/mask), so every entry here is supported by every kernel.
inline constexpr std::array<int, 9> kSupportedBlockSizes = {1, 2, 4, 8, 16, 32, 64, 128, 256};

// Attention head sizes the kernels are compiled for (vLLM's list but 120).
inline constexpr std::array<int, 8> kSupportedHeadSizes = {32, 64, 80, 96, 112, 128, 192, 256};

// Element types of the attention kernels and of write_kv_cache on CUDA (tensor-core mma takes
// 16-bit inputs), and of CPU attention (float32, and bfloat16 computed in float). The CPU cache
// operations move bytes and take every DType.
inline constexpr std::array<DType, 2> kSupportedCudaDTypes = {DType::kFloat16, DType::kBFloat16};
inline constexpr std::array<DType, 2> kSupportedCpuDTypes = {DType::kFloat32, DType::kBFloat16};

// CUDA GPUs the kernels run on: compute capability 8.0 (Ampere) and newer. The default build holds
// code for 8.0, 8.6, 8.9 and 9.0 plus PTX of 9.0, which later GPUs compile at load time.
inline constexpr int kMinComputeCapability = 80;  // major * 10 + minor

bool is_supported_block_size(int block_size);
bool is_supported_head_size(int head_size);
bool is_supported_cuda_dtype(DType dtype);
bool is_supported_cpu_dtype(DType dtype);

// "1, 2, 4, ..." and "float16, bfloat16" for error messages.
std::string supported_block_sizes_string();
std::string supported_head_sizes_string();
std::string supported_cuda_dtypes_string();
std::string supported_cpu_dtypes_string();
// "8.0 or newer (Ampere 8.0 / 8.6, Ada 8.9, Hopper 9.0, ...)" for error messages.
std::string supported_compute_capabilities_string();

// Why CUDA device `device` (`name`, compute capability `cc` = major * 10 + minor) cannot run the
// kernels, or "" when it can.
std::string compute_capability_error(int device, const std::string& name, int cc);

// Throws std::invalid_argument naming the allowed values.
void check_block_size(int block_size);
void check_head_size(int head_size);
// "CUDA <op> does not support float32; supported CUDA dtypes: float16, bfloat16" (CPU alike).
void check_cuda_dtype(DType dtype, const std::string& op);
void check_cpu_dtype(DType dtype, const std::string& op);

}  // namespace pagedcore
