// parallel_for over an index range for the CPU kernels, the calling thread taking part: on the
// threads of the OpenMP runtime already in the process (torch's) when there is one, else on a small
// persistent pool of our own (workers start on first use and live until process exit).
#pragma once

#include <cstdint>
#include <functional>

namespace pagedcore::cpu {

// Runs fn(i) for every i in [0, n), spread over the pool's threads; returns when all are done.
// The first exception thrown by fn is rethrown here. Nested calls run serially.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

// Threads used by parallel_for: PAGEDCORE_NUM_THREADS if set, else the OpenMP runtime's
// omp_get_max_threads() (torch.set_num_threads sets it), else the hardware concurrency.
int num_threads();

}  // namespace pagedcore::cpu
