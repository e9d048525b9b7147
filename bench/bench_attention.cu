// bench_paged attention: workload W4 of docs/benchmarks.md (decode paged attention, Llama-3-8B heads:
// 32 query heads, 8 KV heads, head_dim 128, bf16, block 16, random non-contiguous block tables).
// CUDA events around sweeps over rotated input sets (together larger than L2), warm-up, median of
// many sweeps. Bytes = K and V read + Q read + O written + block tables. The device's read
// bandwidth is measured in the same run (sum of a 1 GiB bf16 buffer) and each shape is shown as a
// fraction of it. --kv-cache-dtype fp8: the caches hold e4m3 values (one byte each).
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.h"
#include "pagedcore/kernels.h"

namespace pagedcore::bench {
namespace {

void cuda_ok(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

// Reads every 16-byte chunk of data once; the sum keeps the loads alive.
__global__ void read_kernel(const uint4* __restrict__ data, int64_t num_chunks, float* __restrict__ sink) {
  float acc = 0.f;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < num_chunks; i += int64_t{gridDim.x} * blockDim.x) {
    const uint4 v = data[i];
    acc += __uint_as_float(v.x) + __uint_as_float(v.y) + __uint_as_float(v.z) + __uint_as_float(v.w);
  }
  if (acc == 12345.678f) *sink = acc;  // practically never: no store traffic, loads not dead
}

template <typename Fn>
double median_ms(Fn&& fn, int warmup, int reps, cudaStream_t stream) {
  cudaEvent_t start, stop;
  cuda_ok(cudaEventCreate(&start), "cudaEventCreate");
  cuda_ok(cudaEventCreate(&stop), "cudaEventCreate");
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> samples;
  for (int i = 0; i < reps; ++i) {
    cuda_ok(cudaEventRecord(start, stream), "cudaEventRecord");
    fn();
    cuda_ok(cudaEventRecord(stop, stream), "cudaEventRecord");
    cuda_ok(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    cuda_ok(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    samples.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return summarize(samples).median;
}

double measure_read_bandwidth(cudaStream_t stream) {
  const int64_t bytes = int64_t{1} << 30;
  void* data = nullptr;
  float* sink = nullptr;
  cuda_ok(cudaMalloc(&data, bytes), "cudaMalloc");
  cuda_ok(cudaMalloc(&sink, sizeof(float)), "cudaMalloc");
  cuda_ok(cudaMemset(data, 0x3c, bytes), "cudaMemset");  // non-zero bf16 pattern
  int num_sms = 0, device = 0;
  cuda_ok(cudaGetDevice(&device), "cudaGetDevice");
  cuda_ok(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  const double ms = median_ms([&] {
    read_kernel<<<num_sms * 8, 512, 0, stream>>>(static_cast<const uint4*>(data), bytes / 16, sink);
  }, 3, 20, stream);
  cuda_ok(cudaGetLastError(), "read_kernel");
  cudaFree(data);
  cudaFree(sink);
  return bytes / (ms * 1e-3) / 1e9;
}

// Fills n bf16 values of device memory with N(0, 1) data (host pattern, copied in chunks).
void fill_random(__nv_bfloat16* dst, int64_t n, std::mt19937& rng) {
  const int64_t chunk = int64_t{1} << 24;
  std::vector<__nv_bfloat16> host(std::min(n, chunk));
  std::normal_distribution<float> normal;
  for (auto& x : host) x = __float2bfloat16(normal(rng));
  for (int64_t done = 0; done < n; done += chunk) {
    const int64_t count = std::min(chunk, n - done);
    cuda_ok(cudaMemcpy(dst + done, host.data(), count * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice), "fill");
  }
}

// Fills n e4m3 bytes of device memory with N(0, 1) data rounded to e4m3.
void fill_random_fp8(uint8_t* dst, int64_t n, std::mt19937& rng) {
  const int64_t chunk = int64_t{1} << 24;
  std::vector<uint8_t> host(std::min(n, chunk));
  std::normal_distribution<float> normal;
  for (auto& x : host) x = __nv_cvt_float_to_fp8(normal(rng), __NV_SATFINITE, __NV_E4M3);
  for (int64_t done = 0; done < n; done += chunk) {
    const int64_t count = std::min(chunk, n - done);
    cuda_ok(cudaMemcpy(dst + done, host.data(), count, cudaMemcpyHostToDevice), "fill");
  }
}

struct Shape {
  int batch;
  int context;
};

}  // namespace

int run_attention_bench(const Flags& flags) {
  const bool json = flags.has("json");
  const int block_size = static_cast<int>(flags.get_int("block-size", 16));
  const int reps = static_cast<int>(flags.get_int("reps", 50));
  const int warmup = static_cast<int>(flags.get_int("warmup", 5));
  const int forced_splits = static_cast<int>(flags.get_int("num-splits", 0));
  const bool contiguous_tables = flags.has("contiguous-tables");  // control: blocks in order, no scatter
  const std::string kv_cache_dtype = flags.get("kv-cache-dtype", "bf16");
  if (kv_cache_dtype != "bf16" && kv_cache_dtype != "fp8") {
    throw std::invalid_argument("--kv-cache-dtype must be bf16 or fp8, got '" + kv_cache_dtype + "'");
  }
  const bool fp8 = kv_cache_dtype == "fp8";
  const DType cache_dtype = fp8 ? DType::kFloat8E4M3 : DType::kBFloat16;
  const int cache_elem_bytes = fp8 ? 1 : 2;
  const int num_heads = 32, num_kv_heads = 8, head_dim = 128;
  const std::vector<Shape> shapes = {{1, 1024}, {64, 1024}, {8, 4096}, {64, 4096}, {16, 16384}};

  cudaStream_t stream;
  cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
  int device = 0;
  cuda_ok(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp prop{};
  cuda_ok(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  const double read_gbps = measure_read_bandwidth(stream);
  if (!json) {
    std::printf("device: %s (%d SMs, L2 %d MiB); measured read bandwidth (1 GiB bf16 sum): %.0f GB/s\n", prop.name,
                prop.multiProcessorCount, prop.l2CacheSize >> 20, read_gbps);
  }

  std::mt19937 rng(1234);
  Table table({"shape", "splits", "sets", "time_us", "GB/s", "of_read_bw", "read_bw_GB/s"});
  for (const Shape& s : shapes) {
    const int blocks_per_seq = (s.context + block_size - 1) / block_size;
    const int64_t kv_bytes_per_set =
        int64_t{2} * s.batch * blocks_per_seq * block_size * num_kv_heads * head_dim * cache_elem_bytes;
    const int num_sets = static_cast<int>(std::clamp<int64_t>((int64_t{4} * prop.l2CacheSize + kv_bytes_per_set - 1) / kv_bytes_per_set, 1, 64));
    const int64_t num_blocks = int64_t{num_sets} * s.batch * blocks_per_seq;
    const int64_t cache_elems = num_blocks * num_kv_heads * block_size * head_dim;
    const int64_t q_elems = int64_t{s.batch} * num_heads * head_dim;

    void *k_cache, *v_cache;
    __nv_bfloat16 *q, *out;
    int32_t *block_tables, *context_lens, *query_start_loc;
    cuda_ok(cudaMalloc(&k_cache, cache_elems * cache_elem_bytes), "cudaMalloc k_cache");
    cuda_ok(cudaMalloc(&v_cache, cache_elems * cache_elem_bytes), "cudaMalloc v_cache");
    cuda_ok(cudaMalloc(&q, q_elems * 2 * num_sets), "cudaMalloc q");
    cuda_ok(cudaMalloc(&out, q_elems * 2 * num_sets), "cudaMalloc out");
    cuda_ok(cudaMalloc(&block_tables, num_blocks * sizeof(int32_t)), "cudaMalloc block_tables");
    cuda_ok(cudaMalloc(&context_lens, s.batch * sizeof(int32_t)), "cudaMalloc context_lens");
    cuda_ok(cudaMalloc(&query_start_loc, (s.batch + 1) * sizeof(int32_t)), "cudaMalloc query_start_loc");
    for (void* cache : {k_cache, v_cache}) {
      if (fp8) fill_random_fp8(static_cast<uint8_t*>(cache), cache_elems, rng);
      else fill_random(static_cast<__nv_bfloat16*>(cache), cache_elems, rng);
    }
    fill_random(q, q_elems * num_sets, rng);

    // Set i uses a random permutation of all blocks, cut into per-sequence tables.
    std::vector<int32_t> ids(num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    if (!contiguous_tables) std::shuffle(ids.begin(), ids.end(), rng);
    cuda_ok(cudaMemcpy(block_tables, ids.data(), num_blocks * sizeof(int32_t), cudaMemcpyHostToDevice), "copy tables");
    std::vector<int32_t> lens(s.batch, s.context), starts(s.batch + 1);
    std::iota(starts.begin(), starts.end(), 0);
    cuda_ok(cudaMemcpy(context_lens, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice), "copy lens");
    cuda_ok(cudaMemcpy(query_start_loc, starts.data(), starts.size() * 4, cudaMemcpyHostToDevice), "copy starts");

    const int splits = forced_splits > 0 ? forced_splits
                                         : cuda_recommended_num_splits(s.batch, num_kv_heads, num_heads, head_dim,
                                                                       cache_dtype, s.context);
    const size_t ws_bytes = paged_attention_workspace_bytes(s.batch, num_heads, head_dim, splits);
    void* workspace = nullptr;
    if (ws_bytes) {
      cuda_ok(cudaMalloc(&workspace, ws_bytes), "cudaMalloc workspace");
      cuda_ok(cudaMemset(workspace, 0, ws_bytes), "cudaMemset workspace");  // split counters start at zero
    }

    // One plan per input set (each its own block tables), as the engine makes one per step.
    std::vector<AttentionPlan> plans;
    std::vector<AttentionLayer> layers;
    for (int set = 0; set < num_sets; ++set) {
      const DecodeBatch batch{DType::kBFloat16, cache_dtype, s.batch, s.context, num_heads, num_kv_heads, head_dim, block_size,
                              num_blocks, q + set * q_elems, out + set * q_elems, k_cache, v_cache,
                              block_tables + int64_t{set} * s.batch * blocks_per_seq, context_lens, query_start_loc};
      plans.emplace_back(decode_step(batch, splits, workspace, ws_bytes), /*cuda=*/true);
      layers.push_back(decode_layer(batch));
    }
    const double sweep_ms = median_ms([&] {
      for (int set = 0; set < num_sets; ++set) plans[set].run(layers[set], stream);
    }, warmup, reps, stream);
    cuda_ok(cudaStreamSynchronize(stream), "attention");
    const double call_s = sweep_ms * 1e-3 / num_sets;
    const double bytes = static_cast<double>(s.batch) * s.context * num_kv_heads * head_dim * 2 * cache_elem_bytes +
                         2.0 * q_elems * 2 + static_cast<double>(s.batch) * blocks_per_seq * 4;
    const double gbps = bytes / call_s / 1e9;
    table.add_row({std::to_string(s.batch) + "x" + std::to_string(s.context), std::to_string(splits),
                   std::to_string(num_sets), fmt(call_s * 1e6, 1), fmt(gbps, 0), fmt(gbps / read_gbps, 3),
                   fmt(read_gbps, 0)});

    cudaFree(k_cache);
    cudaFree(v_cache);
    cudaFree(q);
    cudaFree(out);
    cudaFree(block_tables);
    cudaFree(context_lens);
    cudaFree(query_start_loc);
    if (workspace) cudaFree(workspace);
  }
  table.print(json, "attention (W4: decode, 32 q heads / 8 kv heads, head_dim 128, bf16, " +
                        (fp8 ? std::string("FP8 e4m3 cache, ") : std::string()) + "block " +
                        std::to_string(block_size) +
                        (contiguous_tables ? ", contiguous block tables" : ", random block tables") + ")");
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace pagedcore::bench
