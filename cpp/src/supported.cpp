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
