// Maps the run-time (dtype, head size) pair to a compile-time instantiation. The cases mirror
// kSupportedCudaDTypes and kSupportedHeadSizes of pagedcore/supported.h; the launchers validate
// before dispatching.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>

#include "pagedcore/kernels.h"
#include "pagedcore/supported.h"

namespace pagedcore::cuda {

template <int D>
struct HeadDim {
  static constexpr int value = D;
};

// Calls fn(T{}, HeadDim<D>{}) for the matching instantiation.
template <typename Fn>
auto dispatch_dtype_head_dim(DType dtype, int head_dim, Fn&& fn) {
  auto by_head = [&](auto type_tag) {
    switch (head_dim) {
      case 32: return fn(type_tag, HeadDim<32>{});
      case 64: return fn(type_tag, HeadDim<64>{});
      case 80: return fn(type_tag, HeadDim<80>{});
      case 96: return fn(type_tag, HeadDim<96>{});
      case 112: return fn(type_tag, HeadDim<112>{});
      case 128: return fn(type_tag, HeadDim<128>{});
      case 192: return fn(type_tag, HeadDim<192>{});
      case 256: return fn(type_tag, HeadDim<256>{});
    }
    throw std::invalid_argument("unsupported head_size " + std::to_string(head_dim) +
                                "; supported head sizes: " + supported_head_sizes_string());
  };
  static_assert(kSupportedCudaDTypes.size() == 2 && kSupportedCudaDTypes[0] == DType::kFloat16 &&
                    kSupportedCudaDTypes[1] == DType::kBFloat16,
                "one case below per entry of kSupportedCudaDTypes");
  switch (dtype) {
    case DType::kFloat16: return by_head(__half{});
    case DType::kBFloat16: return by_head(__nv_bfloat16{});
    default: break;
  }
  check_cuda_dtype(dtype, "paged_attention");  // throws: every supported dtype has its case above
  throw std::logic_error("dispatch_dtype_head_dim: no case for " + dtype_name(dtype));
}

}  // namespace pagedcore::cuda
