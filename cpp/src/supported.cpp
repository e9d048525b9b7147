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

}  // namespace

bool is_supported_block_size(int block_size) {
  return std::find(kSupportedBlockSizes.begin(), kSupportedBlockSizes.end(), block_size) !=
         kSupportedBlockSizes.end();
}

bool is_supported_head_size(int head_size) {
  return std::find(kSupportedHeadSizes.begin(), kSupportedHeadSizes.end(), head_size) !=
         kSupportedHeadSizes.end();
}

std::string supported_block_sizes_string() { return join(kSupportedBlockSizes); }
std::string supported_head_sizes_string() { return join(kSupportedHeadSizes); }
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

}  // namespace pagedcore
