// pagedcore._core: thin glue over the C++ core. No logic lives here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "pagedcore/supported.h"
#include "pagedcore/version.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "pagedcore native core: KV block pool, block tables, scheduler and kernels";
  m.attr("__version__") = pagedcore::kVersion;
  m.attr("SUPPORTED_BLOCK_SIZES") = py::tuple(py::cast(std::vector<int>(
      pagedcore::kSupportedBlockSizes.begin(), pagedcore::kSupportedBlockSizes.end())));
  m.attr("SUPPORTED_HEAD_SIZES") = py::tuple(py::cast(std::vector<int>(
      pagedcore::kSupportedHeadSizes.begin(), pagedcore::kSupportedHeadSizes.end())));
  m.attr("MIN_COMPUTE_CAPABILITY") = pagedcore::kMinComputeCapability;
  m.def("built_with_cuda", &pagedcore::built_with_cuda, "True when the CUDA kernels were compiled in.");
  m.def("compute_capability_error", &pagedcore::compute_capability_error, py::arg("device"), py::arg("name"),
        py::arg("capability"), "Why this CUDA device cannot run the kernels (capability = major * 10 + minor), or ''.");
  pagedcore::bindings::bind_pool(m);
  pagedcore::bindings::bind_scheduler(m);
  pagedcore::bindings::bind_kernels(m);
}
