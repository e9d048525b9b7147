#include "pagedcore/version.h"

namespace pagedcore {

bool built_with_cuda() {
#ifdef PAGEDCORE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace pagedcore
