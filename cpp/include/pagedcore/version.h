#pragma once

namespace pagedcore {

inline constexpr const char* kVersion = "0.1.0";

// True when the library was compiled with its CUDA kernels.
bool built_with_cuda();

}  // namespace pagedcore
