// Decode-attention lab: how fast can the W4 paged K/V be *read* under different load schemes, and
// how close does the production decode kernel get to that?
//
// Loader-only kernels walk exactly the decode kernel's work (grid = sequence x KV head x split,
// warps take 16-token tiles round-robin, 3 stages per warp) but skip the attention math: each tile
// is only touched (one word per lane) after it lands. The production kernel runs through
// paged_attention_cuda on the same data in the same run, which separates "the load scheme cannot
// reach the bandwidth" from "the math and the merge get in the way". Data: pseudo-random bf16
// generated on the device; random block tables; input sets rotated past 4x L2.
//
//   nvcc -O3 -std=c++20 -arch=sm_90 --expt-relaxed-constexpr -Icpp/include -Icuda bench/lab/decode_lab.cu \
//        cpp/src/kernel_args.cpp cpp/src/supported.cpp cuda/paged_attention.cu cuda/prefill_attention.cu \
//        -o decode_lab && ./decode_lab [--all-loaders]
//
// Schemes: blocks = one 1D bulk copy (cp.async.bulk) per 4 KiB K or V block on an mbarrier, what the
// production kernel does (with an L2 evict-first hint; "no L2 hint" without); cpasync = 16-byte
// cp.async per lane; tma2d / tma3 / tma3mono = tensor-map copies with 128-byte swizzle (2D boxes
// 64 x 16, or one 3D box per block in two dimension orders); rows = one 1D bulk copy per row.
// Measured on an H200 (bench/RESULTS.md): blocks 0.98 of read bandwidth, tensor maps 0.92-0.94,
// cp.async 0.90, rows 0.76-0.91.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../bench_common.h"
#include "decode_attention.cu"  // production kernel (pagedcore::cuda::launch_decode_attention)

using namespace pagedcore::cuda;
using bf16 = __nv_bfloat16;

#define OK(x)                                                                                     \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));     \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

constexpr int D = 128, HKV = 8, HQ = 32, BS = 16, TILE = 16;

enum Scheme { kCpAsync = 0, kTma = 1, kRows = 2, kBlocks = 3, kTma3 = 4, kTma3Mono = 5, kBlocksHint = 6 };
const char* scheme_name(int s) {
  static const char* names[] = {"cpasync", "tma", "rows", "blocks", "tma3", "tma3mono", "blockshint"};
  return names[s];
}

struct LoadParams {
  const bf16* k_cache;
  const bf16* v_cache;
  const int32_t* block_tables;
  int blocks_per_seq;
  int context_len;
  int num_splits;
  float* sink;
};

__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes));
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity));
}
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_addr(dst)),
      "l"(map), "r"(c0), "r"(c1), "r"(smem_addr(bar))
      : "memory");
}
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, int c0, int c1, int c2, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
          smem_addr(dst)),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar))
      : "memory");
}
__device__ __forceinline__ void bulk_load_hint(void* dst, const void* src, uint32_t bytes, uint64_t* bar, uint64_t policy) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar)), "l"(policy)
               : "memory");
}
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}

template <int kScheme, int kWarps, int kStages>
constexpr int tile_bytes() {
  return kScheme == kRows || kScheme == kCpAsync ? 2 * TILE * kRowPitch<D> * 2 : 2 * TILE * D * 2;
}
template <int kScheme, int kWarps, int kStages>
constexpr size_t lab_smem() {
  return 1024 + static_cast<size_t>(kWarps) * kStages * tile_bytes<kScheme, kWarps, kStages>() + 1024;
}

template <int kScheme, int kWarps, int kStages>
__global__ void __launch_bounds__(kWarps * 32) load_only_kernel(const LoadParams p, const __grid_constant__ CUtensorMap kmap,
                                                                 const __grid_constant__ CUtensorMap vmap,
                                                                 const __grid_constant__ CUtensorMap kmap3,
                                                                 const __grid_constant__ CUtensorMap vmap3) {
  constexpr int kTileBytes = tile_bytes<kScheme, kWarps, kStages>();
  extern __shared__ __align__(1024) unsigned char lab_smem_raw[];
  unsigned char* base = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(lab_smem_raw) + 1023) & ~uintptr_t{1023});
  uint64_t* bars = reinterpret_cast<uint64_t*>(base);  // [warps][stages]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  unsigned char* tiles = base + 1024 + warp * kStages * kTileBytes;
  const int seq = blockIdx.x, head = blockIdx.y, split = blockIdx.z;
  const int num_tiles = (p.context_len + TILE - 1) / TILE;
  const int per_split = (num_tiles + p.num_splits - 1) / p.num_splits;
  const int t_begin = min(num_tiles, split * per_split), t_end = min(num_tiles, t_begin + per_split);
  const int first = t_begin + warp;
  const int n = first < t_end ? (t_end - first + kWarps - 1) / kWarps : 0;
  const int32_t* table = p.block_tables + seq * p.blocks_per_seq;
  if (kScheme != kCpAsync && lane == 0) {
    for (int s = 0; s < kStages; ++s) mbar_init(&bars[warp * kStages + s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncwarp();

  auto issue = [&](int stage, int tile) {
    unsigned char* dst = tiles + stage * kTileBytes;
    uint64_t* bar = &bars[warp * kStages + stage];
    if constexpr (kScheme == kCpAsync) {
      bf16* sk = reinterpret_cast<bf16*>(dst);
      load_kv_tile<bf16, D, TILE, 32>(sk, sk + TILE * kRowPitch<D>, p.k_cache, p.v_cache, table, tile * TILE,
                                      p.context_len, 4, HKV, head, lane);
    } else if constexpr (kScheme == kTma) {
      if (lane == 0) {
        const int row = (table[tile] * HKV + head) * BS;
        mbar_expect_tx(bar, 2 * TILE * D * 2);
        tma_load_2d(dst, &kmap, 0, row, bar);
        tma_load_2d(dst + 2048, &kmap, 64, row, bar);
        tma_load_2d(dst + 4096, &vmap, 0, row, bar);
        tma_load_2d(dst + 6144, &vmap, 64, row, bar);
      }
    } else if constexpr (kScheme == kTma3 || kScheme == kTma3Mono) {
      if (lane == 0) {
        const int row = (table[tile] * HKV + head) * BS;
        mbar_expect_tx(bar, 2 * TILE * D * 2);
        if constexpr (kScheme == kTma3) {
          tma_load_3d(dst, &kmap3, 0, row, 0, bar);
          tma_load_3d(dst + 4096, &vmap3, 0, row, 0, bar);
        } else {
          tma_load_3d(dst, &kmap3, 0, 0, row, bar);
          tma_load_3d(dst + 4096, &vmap3, 0, 0, row, bar);
        }
      }
    } else if constexpr (kScheme == kBlocksHint) {
      if (lane == 0) {
        uint64_t policy;
        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
        const int64_t block = table[tile];
        mbar_expect_tx(bar, 2 * TILE * D * 2);
        bulk_load_hint(dst, p.k_cache + (block * HKV + head) * BS * D, TILE * D * 2, bar, policy);
        bulk_load_hint(dst + TILE * D * 2, p.v_cache + (block * HKV + head) * BS * D, TILE * D * 2, bar, policy);
      }
    } else if constexpr (kScheme == kRows) {
      if (lane == 0) mbar_expect_tx(bar, 2 * TILE * D * 2);
      __syncwarp();
      const int r = lane % 16;
      const int64_t block = table[tile];
      const bf16* src = (lane < 16 ? p.k_cache : p.v_cache) + ((block * HKV + head) * BS + r) * D;
      bulk_load(dst + (lane / 16) * TILE * kRowPitch<D> * 2 + r * kRowPitch<D> * 2, src, D * 2, bar);
    } else {
      if (lane == 0) {
        const int64_t block = table[tile];
        mbar_expect_tx(bar, 2 * TILE * D * 2);
        bulk_load(dst, p.k_cache + (block * HKV + head) * BS * D, TILE * D * 2, bar);
        bulk_load(dst + TILE * D * 2, p.v_cache + (block * HKV + head) * BS * D, TILE * D * 2, bar);
      }
    }
  };

  float acc = 0.f;
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n) issue(s, first + s * kWarps);
    if constexpr (kScheme == kCpAsync) cp_async_commit();
  }
  for (int i = 0; i < n; ++i) {
    const int next = i + kStages - 1;
    if (next < n) issue(next % kStages, first + next * kWarps);
    if constexpr (kScheme == kCpAsync) {
      cp_async_commit();
      cp_async_wait<kStages - 1>();
    } else {
      mbar_wait(&bars[warp * kStages + i % kStages], (i / kStages) & 1);
    }
    __syncwarp();
    const unsigned char* t = tiles + (i % kStages) * kTileBytes;
    acc += __uint_as_float(reinterpret_cast<const uint32_t*>(t)[lane * 17 % (kTileBytes / 4)]);
    __syncwarp();
  }
  if constexpr (kScheme == kCpAsync) cp_async_wait<0>();
  if (acc == 1234.5f) *p.sink = acc;
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  if (!fn) {
    cudaDriverEntryPointQueryResult q;
    OK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&fn), 12000,
                                        cudaEnableDefault, &q));
  }
  return fn;
}

CUtensorMap make_map3(const bf16* cache, int64_t rows, bool mono) {
  CUtensorMap map;
  cuuint64_t dims[3] = {64, static_cast<cuuint64_t>(rows), D / 64};
  cuuint64_t strides[2] = {D * 2, 128};
  cuuint32_t box[3] = {64, TILE, D / 64};
  if (mono) {
    dims[1] = D / 64, dims[2] = static_cast<cuuint64_t>(rows);
    strides[0] = 128, strides[1] = D * 2;
    box[1] = D / 64, box[2] = TILE;
  }
  cuuint32_t estr[3] = {1, 1, 1};
  CUresult r = encode_fn()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<bf16*>(cache), dims, strides, box, estr,
                           CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    std::fprintf(stderr, "cuTensorMapEncodeTiled (3d, mono %d) failed: %d\n", mono, static_cast<int>(r));
    std::memset(&map, 0, sizeof(map));
  }
  return map;
}

CUtensorMap make_map(const bf16* cache, int64_t rows) {
  CUtensorMap map;
  cuuint64_t dims[2] = {D, static_cast<cuuint64_t>(rows)};
  cuuint64_t strides[1] = {D * 2};
  cuuint32_t box[2] = {64, TILE};
  cuuint32_t estr[2] = {1, 1};
  CUresult r = encode_fn()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16*>(cache), dims, strides, box, estr,
                           CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    std::fprintf(stderr, "cuTensorMapEncodeTiled failed: %d\n", static_cast<int>(r));
    std::exit(1);
  }
  return map;
}

__global__ void read_kernel(const uint4* __restrict__ data, int64_t n, float* sink) {
  float acc = 0.f;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const uint4 v = data[i];
    acc += __uint_as_float(v.x) + __uint_as_float(v.w);
  }
  if (acc == 1234.5f) *sink = acc;
}

template <typename Fn>
double median_us(Fn&& fn, int reps = 30) {
  cudaEvent_t a, b;
  OK(cudaEventCreate(&a));
  OK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    OK(cudaEventRecord(a));
    fn();
    OK(cudaEventRecord(b));
    OK(cudaEventSynchronize(b));
    float ms;
    OK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1e3f);
  }
  OK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Fresh pseudo-random N(0, 1)-like bf16 values for every element (hash of the index and a seed).
__global__ void fill_kernel(bf16* x, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ static_cast<uint32_t>(i >> 32) ^ seed;
    float acc = 0.f;
    for (int k = 0; k < 4; ++k) {
      h ^= h >> 15, h *= 0x2C1B3C6Du, h ^= h >> 12, h *= 0x297A2D39u, h ^= h >> 15;
      acc += (h & 0xFFFFFF) * (1.f / 16777216.f);
    }
    x[i] = __float2bfloat16((acc - 2.f) * 1.7320508f);
  }
}

struct Data {
  int batch, context, blocks_per_seq, sets;
  int64_t num_blocks;
  bf16 *k, *v, *q, *out;
  int32_t *tables, *lens, *starts;
  float *ws, *sink;
  size_t ws_bytes;
  CUtensorMap kmap, vmap, kmap3, vmap3, kmap3m, vmap3m;
};

Data make_data(int batch, int context, size_t l2, std::mt19937& rng) {
  Data d{};
  d.batch = batch;
  d.context = context;
  d.blocks_per_seq = (context + BS - 1) / BS;
  const int64_t kv_bytes = int64_t{2} * batch * d.blocks_per_seq * BS * HKV * D * 2;
  d.sets = static_cast<int>(std::clamp<int64_t>((4 * static_cast<int64_t>(l2) + kv_bytes - 1) / kv_bytes, 1, 64));
  d.num_blocks = int64_t{d.sets} * batch * d.blocks_per_seq;
  const int64_t elems = d.num_blocks * HKV * BS * D;
  OK(cudaMalloc(&d.k, elems * 2));
  OK(cudaMalloc(&d.v, elems * 2));
  const int64_t qe = int64_t{batch} * HQ * D * d.sets;
  OK(cudaMalloc(&d.q, qe * 2));
  OK(cudaMalloc(&d.out, qe * 2));
  const uint32_t seed = static_cast<uint32_t>(rng());
  fill_kernel<<<1024, 256>>>(d.k, elems, seed);
  fill_kernel<<<1024, 256>>>(d.v, elems, seed + 1);
  fill_kernel<<<1024, 256>>>(d.q, qe, seed + 2);
  OK(cudaDeviceSynchronize());
  std::vector<int32_t> ids(d.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  OK(cudaMalloc(&d.tables, ids.size() * 4));
  OK(cudaMemcpy(d.tables, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  std::vector<int32_t> lens(batch, context), starts(batch + 1);
  std::iota(starts.begin(), starts.end(), 0);
  OK(cudaMalloc(&d.lens, batch * 4));
  OK(cudaMalloc(&d.starts, (batch + 1) * 4));
  OK(cudaMemcpy(d.lens, lens.data(), batch * 4, cudaMemcpyHostToDevice));
  OK(cudaMemcpy(d.starts, starts.data(), (batch + 1) * 4, cudaMemcpyHostToDevice));
  d.ws_bytes = pagedcore::paged_attention_workspace_bytes(batch, HQ, D, 64);
  OK(cudaMalloc(&d.ws, d.ws_bytes));
  OK(cudaMemset(d.ws, 0, d.ws_bytes));
  OK(cudaMalloc(&d.sink, 4));
  d.kmap = make_map(d.k, d.num_blocks * HKV * BS);
  d.vmap = make_map(d.v, d.num_blocks * HKV * BS);
  d.kmap3 = make_map3(d.k, d.num_blocks * HKV * BS, false);
  d.vmap3 = make_map3(d.v, d.num_blocks * HKV * BS, false);
  d.kmap3m = make_map3(d.k, d.num_blocks * HKV * BS, true);
  d.vmap3m = make_map3(d.v, d.num_blocks * HKV * BS, true);
  return d;
}

void free_data(Data& d) {
  cudaFree(d.k), cudaFree(d.v), cudaFree(d.q), cudaFree(d.out), cudaFree(d.tables), cudaFree(d.lens);
  cudaFree(d.starts), cudaFree(d.ws), cudaFree(d.sink);
}

double kv_bytes(const Data& d) { return 2.0 * d.batch * d.context * HKV * D * 2; }

template <int kScheme, int kWarps, int kStages>
double time_loader(const Data& d, int splits) {
  auto kernel = load_only_kernel<kScheme, kWarps, kStages>;
  constexpr size_t smem = lab_smem<kScheme, kWarps, kStages>();
  OK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  return median_us([&] {
           for (int s = 0; s < d.sets; ++s) {
             LoadParams p{d.k, d.v, d.tables + int64_t{s} * d.batch * d.blocks_per_seq, d.blocks_per_seq, d.context,
                          splits, d.sink};
             kernel<<<dim3(d.batch, HKV, splits), kWarps * 32, smem>>>(p, d.kmap, d.vmap, kScheme == kTma3Mono ? d.kmap3m : d.kmap3,
                                                                    kScheme == kTma3Mono ? d.vmap3m : d.vmap3);
           }
         }) /
         d.sets;
}

double time_host_path(const Data& d, int splits) {
  return median_us([&] {
           for (int s = 0; s < d.sets; ++s) {
             const pagedcore::bench::DecodeBatch batch{
                 pagedcore::DType::kBFloat16, d.batch, d.context, HQ, HKV, D, BS, d.num_blocks,
                 d.q + int64_t{s} * d.batch * HQ * D, d.out + int64_t{s} * d.batch * HQ * D, d.k, d.v,
                 d.tables + int64_t{s} * d.batch * d.blocks_per_seq, d.lens, d.starts};
             pagedcore::paged_attention_cuda(pagedcore::bench::decode_args(batch, splits, d.ws, d.ws_bytes), nullptr);
           }
         }) /
         d.sets;
}

int main(int argc, char** argv) {
  const bool all_loaders = argc > 1 && std::string(argv[1]) == "--all-loaders";
  cudaDeviceProp prop{};
  OK(cudaGetDeviceProperties(&prop, 0));
  float* sink;
  void* big;
  const int64_t big_bytes = int64_t{1} << 30;
  OK(cudaMalloc(&sink, 4));
  OK(cudaMalloc(&big, big_bytes));
  OK(cudaMemset(big, 0x3c, big_bytes));
  double read_us = 1e30;
  for (int blocks_per_sm : {4, 8, 16}) {
    read_us = std::min(read_us, median_us([&] {
                         read_kernel<<<prop.multiProcessorCount * blocks_per_sm, 512>>>(static_cast<const uint4*>(big),
                                                                                       big_bytes / 16, sink);
                       }));
  }
  cudaFree(big);
  const double read_gbps = big_bytes / read_us / 1e3;
  std::printf("device %s, %d SMs, read bandwidth %.0f GB/s\n", prop.name, prop.multiProcessorCount, read_gbps);

  std::mt19937 rng(7);
  struct Shape {
    int b, c;
  };
  for (Shape s : {Shape{64, 4096}, Shape{16, 16384}, Shape{8, 4096}, Shape{64, 1024}, Shape{1, 1024}}) {
    Data d = make_data(s.b, s.c, prop.l2CacheSize, rng);
    const double bytes = kv_bytes(d);
    auto row = [&](const char* name, int splits, double us) {
      std::printf("%6dx%-6d %-22s splits %2d  %8.1f us  %5.0f GB/s  %.3f of read\n", s.b, s.c, name, splits, us,
                  bytes / us / 1e3, bytes / us / 1e3 / read_gbps);
    };
    const bool big_batch = s.b * HKV >= 256;
    for (int sp : big_batch ? std::vector<int>{1, 2} : std::vector<int>{2, 4, 8, 16}) {
      row("production", sp, time_host_path(d, sp));
    }
    for (int sp : big_batch ? std::vector<int>{1, 2} : std::vector<int>{4, 8}) {
      row("load blocks 4w x3", sp, time_loader<kBlocksHint, 4, 3>(d, sp));
      // Tiles in flight per SM: 4w x3 (2 CTAs) and 2w x4 (3 CTAs) keep 24, 3w x3 (3 CTAs) and
      // 9w x3 (1 CTA) 27.
      row("load blocks 2w x4", sp, time_loader<kBlocksHint, 2, 4>(d, sp));
      row("load blocks 3w x3", sp, time_loader<kBlocksHint, 3, 3>(d, sp));
      row("load blocks 9w x3", sp, time_loader<kBlocksHint, 9, 3>(d, sp));
      if (all_loaders) {
        row("load cpasync 4w x3", sp, time_loader<kCpAsync, 4, 3>(d, sp));
        row("load tma2d 4w x3", sp, time_loader<kTma, 4, 3>(d, sp));
        row("load tma3 4w x3", sp, time_loader<kTma3, 4, 3>(d, sp));
        row("load tma3mono 4w x3", sp, time_loader<kTma3Mono, 4, 3>(d, sp));
        row("load rows 4w x3", sp, time_loader<kRows, 4, 3>(d, sp));
        row("load blocks 4w x3 (no L2 hint)", sp, time_loader<kBlocks, 4, 3>(d, sp));
      }
    }
    free_data(d);
  }
  return 0;
}
