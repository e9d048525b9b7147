#include "pagedcore/supported.h"

#include <algorithm>
#include <stdexcept>

namespace pagedcore {
namespace {

template <typename Array>
std::string join(const Array& values) {
  std::string out;
  for (int v : values) {
    if (!out.empty()) out += ", ";
    out += std::to_string(v);
  }
  return out;
}

template <size_t N>
std::string join_names(const std::array<DType, N>& dtypes) {
  std::string out;
  for (DType d : dtypes) {
    if (!out.empty()) out += ", ";
    out += dtype_name(d);
  }
  return out;
}

template <typename Array, typename Value>
bool contains(const Array& values, Value v) {
  return std::find(values.begin(), values.end(), v) != values.end();
}

}  // namespace

bool is_supported_block_size(int block_size) { return contains(kSupportedBlockSizes, block_size); }
bool is_supported_head_size(int head_size) { return contains(kSupportedHeadSizes, head_size); }
bool is_supported_cuda_dtype(DType dtype) { return contains(kSupportedCudaDTypes, dtype); }
bool is_supported_cpu_dtype(DType dtype) { return contains(kSupportedCpuDTypes, dtype); }

std::string supported_block_sizes_string() { return join(kSupportedBlockSizes); }
std::string supported_head_sizes_string() { return join(kSupportedHeadSizes); }
std::string supported_cuda_dtypes_string() { return join_names(kSupportedCudaDTypes); }
std::string supported_cpu_dtypes_string() { return join_names(kSupportedCpuDTypes); }
std::string supported_compute_capabilities_string() {
  return std::to_string(kMinComputeCapability / 10) + "." + std::to_string(kMinComputeCapability % 10) +
         " or newer (Ampere 8.0 / 8.6, Ada 8.9, Hopper 9.0 and later)";
}

std::string compute_capability_error(int device, const std::string& name, int cc) {
  if (cc >= kMinComputeCapability) return "";
  return "GPU " + std::to_string(device) + " (" + name + ", compute capability " + std::to_string(cc / 10) + "." +
         std::to_string(cc % 10) + ") is not supported: pagedcore's CUDA kernels need compute capability " +
         supported_compute_capabilities_string() + "; use device=\"cpu\" on this machine";
}

void check_block_size(int block_size) {
  if (!is_supported_block_size(block_size)) {
    throw std::invalid_argument("unsupported block_size " + std::to_string(block_size) +
                                "; supported block sizes: " + supported_block_sizes_string());
  }
}

void check_head_size(int head_size) {
  if (!is_supported_head_size(head_size)) {
    throw std::invalid_argument("unsupported head_size " + std::to_string(head_size) +
                                "; supported head sizes: " + supported_head_sizes_string());
  }
}

void check_cuda_dtype(DType dtype, const std::string& op) {
  if (!is_supported_cuda_dtype(dtype)) {
    throw std::invalid_argument("CUDA " + op + " does not support " + dtype_name(dtype) +
                                "; supported CUDA dtypes: " + supported_cuda_dtypes_string());
  }
}

void check_cpu_dtype(DType dtype, const std::string& op) {
  if (!is_supported_cpu_dtype(dtype)) {
    throw std::invalid_argument("CPU " + op + " does not support " + dtype_name(dtype) +
                                "; supported CPU dtypes: " + supported_cpu_dtypes_string());
  }
}

}  // namespace pagedcore
