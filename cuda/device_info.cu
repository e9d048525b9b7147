#include "device_info.cuh"

#include <cstdlib>
#include <stdexcept>

#include "cuda_check.cuh"
#include "pagedcore/kernels.h"
#include "pagedcore/supported.h"

namespace pagedcore::cuda {
namespace {

std::string capability_string(int cc) { return std::to_string(cc / 10) + "." + std::to_string(cc % 10); }

DeviceInfo read_device_info(int device) {
  cudaDeviceProp prop{};
  PAGEDCORE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return DeviceInfo{prop.name, prop.major * 10 + prop.minor, prop.multiProcessorCount,
                    prop.sharedMemPerBlockOptin};
}

}  // namespace

int current_device() {
  int device = 0;
  PAGEDCORE_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= kMaxDevices) {
    throw std::runtime_error("pagedcore supports CUDA devices 0.." + std::to_string(kMaxDevices - 1) + ", got device " +
                             std::to_string(device));
  }
  return device;
}

const DeviceInfo& device_info(int device) {
  static PerDevice<DeviceInfo> cache;
  return cache.get(device, [device] { return read_device_info(device); });
}

KernelPath requested_kernel_path() {
  static const KernelPath path = [] {
    const char* value = std::getenv("PAGEDCORE_KERNEL_PATH");
    const std::string v = value ? value : "";
    if (v.empty() || v == "auto") return KernelPath::kAuto;
    if (v == "ampere") return KernelPath::kAmpere;
    throw std::invalid_argument("PAGEDCORE_KERNEL_PATH=" + v + " is not a kernel path; use auto (the default) or ampere");
  }();
  return path;
}

const KernelFit& KernelFitCache::get(const void* kernel, size_t smem_bytes, int threads_per_cta) {
  const int device = current_device();
  return per_device_.get(device, [&] { return make_fit(device, kernel, smem_bytes, threads_per_cta); });
}

KernelFit KernelFitCache::make_fit(int device, const void* kernel, size_t smem_bytes, int threads_per_cta) {
  check_cuda_device(device);
  cudaFuncAttributes attr{};
  PAGEDCORE_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  KernelFit fit;
  fit.compiled_arch = attr.ptxVersion;
  fit.fits = attr.sharedSizeBytes + smem_bytes <= device_info(device).max_smem_per_block;
  if (fit.fits) {
    PAGEDCORE_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes)));
    int per_sm = 0;
    PAGEDCORE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads_per_cta, smem_bytes));
    fit.resident_ctas = static_cast<int64_t>(per_sm) * device_info(device).num_sms;
    fit.fits = fit.resident_ctas > 0;
  }
  return fit;
}

}  // namespace pagedcore::cuda

namespace pagedcore {

namespace {
__global__ void probe_kernel() {}
}  // namespace

std::string cuda_build_architectures() { return PAGEDCORE_CUDA_ARCHITECTURES; }

void check_cuda_device(int device) {
  int count = 0;
  PAGEDCORE_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count) {
    throw std::invalid_argument("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
                                " visible)");
  }
  const cuda::DeviceInfo& info = cuda::device_info(device);
  const std::string unsupported = compute_capability_error(device, info.name, info.compute_capability);
  if (!unsupported.empty()) throw std::runtime_error(unsupported);
  // The build must hold code this device can load: SASS of its architecture or PTX of an older one.
  int previous = 0;
  PAGEDCORE_CUDA_CHECK(cudaGetDevice(&previous));
  PAGEDCORE_CUDA_CHECK(cudaSetDevice(device));
  cudaFuncAttributes attr{};
  const cudaError_t status = cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(probe_kernel));
  PAGEDCORE_CUDA_CHECK(cudaSetDevice(previous));
  if (status == cudaErrorInvalidDeviceFunction || status == cudaErrorNoKernelImageForDevice) {
    (void)cudaGetLastError();
    throw std::runtime_error("GPU " + std::to_string(device) + " (" + info.name + ", compute capability " +
                             cuda::capability_string(info.compute_capability) + ") has no code in this build of pagedcore (CUDA architectures " +
                             cuda_build_architectures() + "); rebuild with PAGEDCORE_CUDA_ARCHS=" +
                             std::to_string(info.compute_capability) + " (or leave it unset for the default list)");
  }
  PAGEDCORE_CUDA_CHECK(status);
}

}  // namespace pagedcore
