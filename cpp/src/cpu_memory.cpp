// The CPU engine's heap policy (pagedcore/kernels.h: cpu_keep_freed_memory).
//
// A CPU forward pass allocates and frees tensors of megabytes every layer (oneDNN's linears have
// no output argument). glibc serves blocks above its mmap threshold (at most 32 MiB by its own
// rule) with fresh mappings and returns heap tops above its trim threshold to the kernel, so each of
// those tensors was faulted in page by page again: ~410,000 minor faults and ~0.85 s of system time
// per W5 pass (bench/RESULTS.md, "W5 on the CPU: freed memory kept"). Larger thresholds keep the
// freed memory in the heap for the next step's tensors.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>

#if defined(__GLIBC__)
#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>  // environ
#endif

#include "pagedcore/kernels.h"

namespace pagedcore {
namespace {

#if defined(__GLIBC__)
// The user's own choice wins: PAGEDCORE_KEEP_FREED_MEMORY=0, glibc's malloc tunables or any of its
// MALLOC_* environment variables.
bool left_to_the_user() {
  const char* keep = std::getenv("PAGEDCORE_KEEP_FREED_MEMORY");
  if (keep != nullptr && *keep != '\0') {  // empty: as if unset
    if (std::strcmp(keep, "0") == 0) return true;
    if (std::strcmp(keep, "1") != 0) {
      throw std::invalid_argument("PAGEDCORE_KEEP_FREED_MEMORY=" + std::string(keep) +
                                  ": expected 1 (the CPU engine keeps freed memory, the default) or 0 (malloc left as it is)");
    }
  }
  if (const char* tunables = std::getenv("GLIBC_TUNABLES")) {
    if (std::strstr(tunables, "glibc.malloc.") != nullptr) return true;
  }
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (std::strncmp(*entry, "MALLOC_", 7) == 0) return true;
  }
  return false;
}

// Whether malloc is glibc's: an allocator put in front of it (LD_PRELOAD of jemalloc, tcmalloc) has
// its own policy, and mallopt would only tune glibc's unused one.
bool glibc_malloc() {
  Dl_info where;
  if (dladdr(reinterpret_cast<void*>(&::malloc), &where) == 0 || where.dli_fname == nullptr) return false;
  const std::string path = where.dli_fname;
  return path.find("/libc.so") != std::string::npos || path.rfind("libc.so", 0) == 0;
}
#endif

}  // namespace

int64_t cpu_keep_freed_memory(int64_t mmap_threshold) {
#if defined(__GLIBC__)
  if (mmap_threshold <= 0 || mmap_threshold > (int64_t{1} << 29)) return 0;
  if (left_to_the_user() || !glibc_malloc()) return 0;
  // glibc before 2.35 refuses thresholds above 32 MiB (HEAP_MAX_SIZE / 2): fall back to that.
  constexpr int64_t kOldGlibcMax = int64_t{32} << 20;
  for (int64_t threshold : {mmap_threshold, std::min(mmap_threshold, kOldGlibcMax)}) {
    // The trim threshold as glibc's own adaptive rule sets it: twice the mmap threshold.
    if (mallopt(M_MMAP_THRESHOLD, static_cast<int>(threshold)) == 1 &&
        mallopt(M_TRIM_THRESHOLD, static_cast<int>(2 * threshold)) == 1) {
      return threshold;
    }
  }
  return 0;
#else
  (void)mmap_threshold;
  return 0;  // another C library: its allocator's own policy stays
#endif
}

}  // namespace pagedcore
