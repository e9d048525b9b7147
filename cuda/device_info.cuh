// What the CUDA launchers choose kernels by: facts of the current device, read once per device,
// and per-kernel facts (the architecture its loaded code targets, whether its shared memory fits,
// how many CTAs stay resident), also read once per device.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

namespace pagedcore::cuda {

// Devices the per-device caches below hold (device ordinals 0..kMaxDevices-1).
inline constexpr int kMaxDevices = 64;

// A value per device, made on first use by make() under a lock.
template <typename V>
class PerDevice {
 public:
  template <typename Make>
  const V& get(int device, Make&& make) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::optional<V>& slot = values_.at(device);
    if (!slot) slot.emplace(make());
    return *slot;
  }

 private:
  std::mutex mutex_;
  std::array<std::optional<V>, kMaxDevices> values_;
};

struct DeviceInfo {
  std::string name;
  int compute_capability;     // major * 10 + minor, e.g. 80 (A100), 89 (L40S), 90 (H100 / H200)
  int num_sms;
  size_t max_smem_per_block;  // opt-in dynamic shared memory limit of one CTA, bytes
};

// The current device (cudaGetDevice).
int current_device();
const DeviceInfo& device_info(int device);

// The kernel families a launch may take. kAuto: the Hopper paths (bulk copies with mbarrier
// transaction counts) wherever the device and the loaded code have them; kAmpere: the cp.async
// paths every supported GPU runs, also on Hopper (PAGEDCORE_KERNEL_PATH=ampere, for tests and
// for measuring what an Ampere / Ada GPU gets).
enum class KernelPath { kAuto, kAmpere };
KernelPath requested_kernel_path();  // read once from PAGEDCORE_KERNEL_PATH; a bad value throws

// Per-device facts of one kernel with a given launch shape.
struct KernelFit {
  int compiled_arch = 0;      // PTX target of the code the driver loaded (80 for compute_80 PTX JIT-compiled on an H200)
  bool fits = false;          // its dynamic shared memory fits one CTA on the device
  int64_t resident_ctas = 0;  // CTAs resident at once over all SMs (0 when !fits)
};

// One kernel's KernelFit, worked out once per device: the first call on a device raises the
// kernel's dynamic shared memory limit (when it fits) and asks the occupancy calculator. A
// device the build has no code for gets one clear error naming the built architectures.
class KernelFitCache {
 public:
  const KernelFit& get(const void* kernel, size_t smem_bytes, int threads_per_cta);

 private:
  static KernelFit make_fit(int device, const void* kernel, size_t smem_bytes, int threads_per_cta);
  PerDevice<KernelFit> per_device_;
};

}  // namespace pagedcore::cuda
