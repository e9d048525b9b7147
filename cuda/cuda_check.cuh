// Error checking of CUDA runtime calls: failures become std::runtime_error with the call's text.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace pagedcore::cuda {

inline void check(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(status) + " (" + what + " at " + file +
                             ":" + std::to_string(line) + ")");
  }
}

}  // namespace pagedcore::cuda

#define PAGEDCORE_CUDA_CHECK(expr) ::pagedcore::cuda::check((expr), #expr, __FILE__, __LINE__)
// After a kernel launch: reports bad launch configurations at once (asynchronous faults surface later).
#define PAGEDCORE_CUDA_CHECK_LAUNCH() PAGEDCORE_CUDA_CHECK(cudaGetLastError())
