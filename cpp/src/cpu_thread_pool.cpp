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

// The OpenMP runtime already loaded into the process: the one torch's libtorch_cpu links against
// (symbols looked up through its handle, which searches its dependencies), else a loaded library
// named as an OpenMP runtime (GNU, Intel or LLVM: all export the GNU entry points). Running the
// kernels on its threads matters on a small machine: after each of torch's parallel regions its
// worker threads spin for a while waiting for the next one, and a pool of our own would share the
// cores with those spinning threads (bench/RESULTS.md, "W5 on the CPU").
struct OpenMpRuntime {
  std::string path;
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*max_threads)() = nullptr;                                            // omp_get_max_threads
  int (*in_parallel)() = nullptr;                                            // omp_in_parallel
  explicit operator bool() const { return parallel && max_threads && in_parallel; }
};

#if defined(__linux__)
bool has_prefix(const std::string& name, const char* prefix) { return name.rfind(prefix, 0) == 0; }

// Loaded libraries' paths, with the count of libraries ever loaded (to look again only after one more
// is). dlopen / dlsym must not run inside dl_iterate_phdr's callback: it holds the loader's lock in
// the opposite order to a dlopen in another thread.
std::vector<std::string> loaded_libraries(unsigned long long& adds) {
  struct Found {
    std::vector<std::string> paths;
    unsigned long long adds = 0;
  } found;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        auto& f = *static_cast<Found*>(out);
        f.adds = info->dlpi_adds;
        if (info->dlpi_name && info->dlpi_name[0]) f.paths.emplace_back(info->dlpi_name);
        return 0;
      },
      &found);
  adds = found.adds;
  return std::move(found.paths);
}

OpenMpRuntime runtime_through(const std::string& path, const std::string& reported_path) {
  OpenMpRuntime found;
  void* handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);  // already loaded: only a reference
  if (!handle) return found;
  found.parallel = reinterpret_cast<decltype(found.parallel)>(dlsym(handle, "GOMP_parallel"));
  found.max_threads = reinterpret_cast<decltype(found.max_threads)>(dlsym(handle, "omp_get_max_threads"));
  found.in_parallel = reinterpret_cast<decltype(found.in_parallel)>(dlsym(handle, "omp_in_parallel"));
  if (!found) {
    dlclose(handle);
    return {};
  }
  // The handle stays open: the runtime is never unloaded while the kernels may use it.
  Dl_info where;
  const bool located = dladdr(reinterpret_cast<void*>(found.parallel), &where) && where.dli_fname;
  found.path = located ? where.dli_fname : reported_path;
  return found;
}

OpenMpRuntime find_openmp(unsigned long long& adds) {
  const std::vector<std::string> paths = loaded_libraries(adds);
  auto base = [](const std::string& path) { return path.substr(path.rfind('/') + 1); };
  for (const auto& path : paths) {
    if (has_prefix(base(path), "libtorch_cpu")) {
      if (OpenMpRuntime found = runtime_through(path, path)) return found;
    }
  }
  for (const auto& path : paths) {
    const std::string name = base(path);
    const bool runtime = has_prefix(name, "libgomp.") || has_prefix(name, "libgomp-") ||
                         has_prefix(name, "libiomp5") || has_prefix(name, "libomp.") || has_prefix(name, "libomp-");
    if (runtime && name.find("plugin") == std::string::npos) {
      if (OpenMpRuntime found = runtime_through(path, path)) return found;
    }
  }
  return {};
}
#endif

// Looked up at the first parallel_for and kept once found; while none is found (torch not imported
// yet: pagedcore's package imports it lazily), looked up again whenever another library has been
// loaded since. PAGEDCORE_OWN_THREADS=1 keeps the kernels on the pool above (README, "On the CPU").
const OpenMpRuntime& openmp() {
  static std::mutex mutex;
  static OpenMpRuntime runtime;
  static std::atomic<bool> found{false};
  static unsigned long long adds_seen = ~0ull;
  if (found.load(std::memory_order_acquire)) return runtime;
  static const bool own = [] {
    const char* env = std::getenv("PAGEDCORE_OWN_THREADS");
    return env && std::strcmp(env, "1") == 0;
  }();
  static const OpenMpRuntime none;
  if (own) return none;
#if defined(__linux__)
  std::lock_guard<std::mutex> lock(mutex);
  if (found.load(std::memory_order_relaxed)) return runtime;
  unsigned long long adds = 0;
  dl_iterate_phdr([](dl_phdr_info* info, size_t, void* out) {
    *static_cast<unsigned long long*>(out) = info->dlpi_adds;
    return 1;
  }, &adds);
  if (adds == adds_seen) return none;
  runtime = find_openmp(adds_seen);
  if (runtime) {
    found.store(true, std::memory_order_release);
    return runtime;
  }
#endif
  return none;
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
  // omp_get_max_threads is per thread: torch.set_num_threads sets the calling thread's, and torch sets
  // it in any other thread at that thread's first parallel op (the engine thread's embedding, say).
  if (const auto& runtime = openmp()) return std::max(1, runtime.max_threads());
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
