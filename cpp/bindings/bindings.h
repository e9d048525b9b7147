// Registration functions of the pybind11 module, one per bound part of the core.
#pragma once

#include <pybind11/pybind11.h>

namespace pagedcore::bindings {

void bind_kernels(pybind11::module_& m);
void bind_pool(pybind11::module_& m);
void bind_scheduler(pybind11::module_& m);

}  // namespace pagedcore::bindings
