#include "cpu_thread_pool.h"

#include "pagedcore/kernels.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <dlfcn.h>
#include <link.h>
#endif

namespace pagedcore::cpu {
namespace {

thread_local bool t_inside_pool = false;

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads) {
    for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int64_t n, const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> one_job(job_mutex_);  // one parallel_for at a time
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      error_ = nullptr;
      active_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return active_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work() {
    t_inside_pool = true;
    for (int64_t i; (i = next_.fetch_add(1)) < n_;) {
      try {
        (*fn_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_);
      }
    }
    t_inside_pool = false;
  }

  void worker_loop() {
    uint64_t seen = 0;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      work();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--active_ == 0) done_.notify_all();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex job_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

ThreadPool& pool() {
  static ThreadPool instance(num_threads());
  return instance;
}

// The OpenMP runtime already loaded into the process (torch's libgomp, or an Intel / LLVM runtime,
// which export the same GNU entry points), found by name among the loaded libraries. Running the
// kernels on its threads matters on a small machine: after each of torch's parallel regions its
// worker threads spin for a while waiting for the next one, and a pool of our own would share the
// cores with those spinning threads (measured: the CPU paged attention ran 2.2x slower inside the
// engine than alone on 2 cores).
struct OpenMpRuntime {
  std::string path;
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*max_threads)() = nullptr;                                            // omp_get_max_threads
  int (*in_parallel)() = nullptr;                                            // omp_in_parallel
  explicit operator bool() const { return parallel && max_threads && in_parallel; }
};

#if defined(__linux__)
int find_openmp(dl_phdr_info* info, size_t, void* out) {
  const char* path = info->dlpi_name;
  const char* base = path ? std::strrchr(path, '/') : nullptr;
  base = base ? base + 1 : path;
  if (!base || !(std::strncmp(base, "libgomp", 7) == 0 || std::strncmp(base, "libiomp5", 8) == 0 ||
                 std::strncmp(base, "libomp", 6) == 0)) {
    return 0;
  }
  void* handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);  // already loaded: only a reference
  if (!handle) return 0;
  OpenMpRuntime found;
  found.parallel = reinterpret_cast<decltype(found.parallel)>(dlsym(handle, "GOMP_parallel"));
  found.max_threads = reinterpret_cast<decltype(found.max_threads)>(dlsym(handle, "omp_get_max_threads"));
  found.in_parallel = reinterpret_cast<decltype(found.in_parallel)>(dlsym(handle, "omp_in_parallel"));
  if (!found) return 0;  // the handle stays open: the runtime is never unloaded while we may use it
  found.path = path;
  *static_cast<OpenMpRuntime*>(out) = found;
  return 1;
}
#endif

// Looked up once, at the first parallel_for (by then `import pagedcore` has loaded torch).
// PAGEDCORE_OWN_THREADS=1 keeps the kernels on the pool above.
const OpenMpRuntime& openmp() {
  static const OpenMpRuntime runtime = [] {
    OpenMpRuntime found;
    const char* own = std::getenv("PAGEDCORE_OWN_THREADS");
#if defined(__linux__)
    if (!(own && std::strcmp(own, "1") == 0)) dl_iterate_phdr(find_openmp, &found);
#endif
    return found;
  }();
  return runtime;
}

struct OpenMpJob {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> next{0};
  std::mutex mutex;
  std::exception_ptr error;
};

// The body of the parallel region: every thread of the team takes indices until none are left.
void openmp_worker(void* data) {
  auto& job = *static_cast<OpenMpJob*>(data);
  const bool was_inside = t_inside_pool;
  t_inside_pool = true;
  for (int64_t i; (i = job.next.fetch_add(1)) < job.n;) {
    try {
      (*job.fn)(i);
    } catch (...) {  // an exception must not leave the parallel region
      std::lock_guard<std::mutex> lock(job.mutex);
      if (!job.error) job.error = std::current_exception();
      job.next.store(job.n);
    }
  }
  t_inside_pool = was_inside;
}

}  // namespace

int num_threads() {
  if (const char* env = std::getenv("PAGEDCORE_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  if (const auto& runtime = openmp()) return std::max(1, runtime.max_threads());  // follows torch.set_num_threads
  return std::max(1u, std::thread::hardware_concurrency());
}

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  const int threads = num_threads();
  const auto& runtime = openmp();
  if (n == 1 || t_inside_pool || threads == 1 || (runtime && runtime.in_parallel())) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  if (runtime) {
    OpenMpJob job;
    job.fn = &fn;
    job.n = n;
    runtime.parallel(openmp_worker, &job, static_cast<unsigned>(std::min<int64_t>(threads, n)), 0);
    if (job.error) std::rethrow_exception(job.error);
    return;
  }
  pool().run(n, fn);
}

}  // namespace pagedcore::cpu

namespace pagedcore {

std::string cpu_parallel_backend() {
  const auto& runtime = cpu::openmp();
  return runtime ? "openmp " + runtime.path : "own pool";
}

int cpu_num_threads() { return cpu::num_threads(); }

}  // namespace pagedcore
