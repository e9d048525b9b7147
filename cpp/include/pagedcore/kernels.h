// Kernel API of pagedcore: paged attention and KV-cache operations, CPU and CUDA.
//
// KV cache layout (per layer, K and V in separate arrays):
//   k_cache, v_cache: [num_blocks, num_kv_heads, block_size, head_dim], contiguous ("HND").
//   On CUDA the 16-byte chunks inside each row are permuted (pagedcore/kv_layout.h) so that a
//   block copied to shared memory as it is reads without bank conflicts; write_kv_cache and the
//   attention kernels agree on it, and whole-block copies (copy_blocks, swap_blocks) ignore it.
//   FP8 caches (one byte per element) have their own permutation (kv_fp8_chunk_position), for the
//   same reason: decode reads their fragments straight from the copied bytes.
// One KV head's block is one contiguous run of block_size * head_dim elements, so a decode CTA
// reading one KV head streams long contiguous runs (4 KiB for block 16, head_dim 128, bf16), and
// a block of every head is one contiguous [num_kv_heads, block_size, head_dim] span (block_bytes),
// which is what copy_blocks / swap_blocks move.
//
// Mixed-batch semantics of paged attention: sequences i = 0..num_seqs-1; the query tokens of
// sequence i are rows query_start_loc[i] .. query_start_loc[i+1]-1 of q. context_lens[i] counts
// every token of the sequence including this step's new ones (whose K/V write_kv_cache already
// stored). Query row j of sequence i (qlen_i rows) sits at position context_lens[i] - qlen_i + j
// and attends to keys [0, that position] (causal among the new tokens, full over the cached past).
//
// Kernels take raw pointers, sizes and strides (in elements) and, on CUDA, a stream. Inputs are
// validated on the host (sizes, dtypes, dispatch table); device data (block ids, lengths) is not.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

// Same declaration as CUDA's driver_types.h, so this header needs no CUDA include.
typedef struct CUstream_st* cudaStream_t;

namespace pagedcore {

// kFloat8E4M3: KV caches only (kv_cache_dtype="fp8"), each layer's K and V with a float scale.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat8E4M3 = 3 };

std::string dtype_name(DType dtype);
int dtype_bytes(DType dtype);

// ---- write_kv_cache -------------------------------------------------------------------------------
struct WriteKVCacheArgs {
  DType dtype;
  int num_tokens;
  int num_kv_heads;
  int head_dim;
  int block_size;
  int64_t num_blocks;
  const void* k;          // [num_tokens, num_kv_heads, head_dim], last dim contiguous
  int64_t k_stride_token; // elements between tokens of k (a fused-qkv slice has a large stride)
  int64_t k_stride_head;  // elements between heads of k
  const void* v;          // [num_tokens, num_kv_heads, head_dim], last dim contiguous
  int64_t v_stride_token;
  int64_t v_stride_head;
  void* k_cache;                // [num_blocks, num_kv_heads, block_size, head_dim]
  void* v_cache;                // [num_blocks, num_kv_heads, block_size, head_dim]
  const int32_t* slot_mapping;  // [num_tokens]; block_id * block_size + offset, kPaddingSlot skips
  DType cache_dtype;            // dtype (rows copied), or kFloat8E4M3: stored = e4m3(x / scale)
  float k_scale = 1.0f;         // FP8 caches: what one unit of the stored K / V is worth
  float v_scale = 1.0f;
};

// ---- paged_attention: one plan per step, run by every layer ---------------------------------------
// AttentionParams is the attention kernels' one parameter list, CPU and CUDA alike (the CUDA kernels
// take it by value): what the step gives (AttentionStep), what each layer gives (AttentionLayer) and
// what AttentionPlan derives from them once per step. A new kernel parameter is a field of one of
// these, plus the line that sets it.
struct AttentionStep {
  DType dtype;
  int num_seqs;
  int num_tokens;     // query rows in q / out (= query_start_loc[num_seqs])
  int num_heads;      // query heads
  int num_kv_heads;   // KV heads; num_heads % num_kv_heads == 0 (GQA / MQA)
  int head_dim;
  int block_size;
  int64_t num_blocks;              // blocks in each cache array (CPU checks block ids against it)
  const int32_t* block_tables;     // [num_seqs, max_blocks_per_seq], row stride below
  int64_t block_tables_stride;     // elements between rows of block_tables
  int max_blocks_per_seq;
  const int32_t* context_lens;     // [num_seqs]
  const int32_t* query_start_loc;  // [num_seqs + 1]
  float scale;                     // softmax scale, usually 1 / sqrt(head_dim)
  int max_query_len;               // host-side max of the query lengths (CUDA skips the prefill launch at 1)
  int max_context_len;             // host-side max of context_lens (CUDA picks the split count from it)
  int num_splits;                  // CUDA decode split-KV partitions, 1..kMaxAttentionSplits; 0 = the plan picks
  void* workspace;                 // CUDA: paged_attention_workspace_bytes(...) zero-filled bytes when num_splits > 1
  size_t workspace_bytes;
  DType cache_dtype;               // set it: dtype, or kFloat8E4M3: the caches hold e4m3 values times a
                                   // layer's scales
};

struct AttentionLayer {
  const void* q;            // [num_tokens, num_heads, head_dim], last dim contiguous
  int64_t q_stride_token;
  int64_t q_stride_head;
  const void* k_cache;      // [num_blocks, num_kv_heads, block_size, head_dim]
  const void* v_cache;      // [num_blocks, num_kv_heads, block_size, head_dim]
  void* out;                // [num_tokens, num_heads, head_dim], last dim contiguous
  int64_t out_stride_token;
  int64_t out_stride_head;
  float k_scale = 1.0f;     // FP8 caches: this layer's K and V scales (1 otherwise)
  float v_scale = 1.0f;
};

struct AttentionParams : AttentionStep, AttentionLayer {
  int group_size;                  // num_heads / num_kv_heads
  int block_size_log2;             // block_size = 1 << block_size_log2
  float scale_log2;                // scale * log2(e): the CUDA kernels' scores go through exp2
  bool prefill_takes_decode_rows;  // CUDA: group_size > kDecodeMaxGroupSize, the prefill kernel runs 1-token rows
  int* split_counters;             // [num_seqs, num_kv_heads] splits finished; zero between launches
  float* partial_out;              // [num_splits, num_seqs, num_heads, head_dim] (split-KV only)
  float* partial_lse;              // [num_splits, num_seqs, num_heads], log2 domain (split-KV only)
};

// Query heads per KV head the CUDA decode kernel takes (its warps hold 16 rows); larger groups run
// through the prefill kernel.
inline constexpr int kDecodeMaxGroupSize = 16;

// One step's attention: built once per step (validation, the split count and workspace layout, and
// on CPU a check of every block id), then run by every layer with that layer's q, caches and out.
// The step's arrays may be refilled between runs (CUDA graphs replay a plan over refilled buffers);
// a CPU run checks their contents again (the CPU kernel reads them on the host anyway).
class AttentionPlan {
 public:
  // cuda: the step's arrays live on the current CUDA device. Throws std::invalid_argument naming
  // the limit for a step the kernels do not take.
  AttentionPlan(const AttentionStep& step, bool cuda);
  const AttentionParams& params() const { return params_; }
  bool cuda() const { return cuda_; }
  // Attention of one layer (stream ignored on CPU). Throws std::invalid_argument for strides or
  // alignments the kernels do not take.
  void run(const AttentionLayer& layer, cudaStream_t stream) const;

 private:
  AttentionParams params_{};
  bool cuda_;
};

// Split-KV workspace: int32 split counters (one per sequence and KV head) in the first
// split_counter_region_bytes(workspace_bytes) bytes, then float [num_splits, num_seqs, num_heads,
// head_dim + 1] partials (outputs, then lse). The counter region depends only on the buffer's size,
// so calls of any shape that fit keep their partials off it. Zero-fill the workspace once when
// allocating it: every launch leaves the counters at zero again, so one workspace serves any
// number of launches on one stream (CUDA graphs included).
size_t paged_attention_workspace_bytes(int num_seqs, int num_heads, int head_dim, int num_splits);
inline constexpr size_t split_counter_region_bytes(size_t workspace_bytes) { return workspace_bytes / 33 / 16 * 16; }
inline constexpr size_t split_partials_bytes(int num_seqs, int num_heads, int head_dim, int num_splits) {
  return static_cast<size_t>(num_splits) * num_seqs * num_heads * (head_dim + 1) * sizeof(float);
}

// Largest num_splits the CUDA decode kernel accepts.
inline constexpr int kMaxAttentionSplits = 64;

// Throws std::invalid_argument with a message naming what is supported. Shared by CPU and CUDA.
void check_write_kv_cache_args(const WriteKVCacheArgs& args);
// The KV cache's element type against the model's: the same, or float8_e4m3fn.
void check_cache_dtype(DType dtype, DType cache_dtype, const std::string& op);
// Positive finite scales for an FP8 cache, exactly 1 for any other.
void check_kv_scales(DType cache_dtype, float k_scale, float v_scale);

// ---- CPU implementations (threads; fp32 and bf16) -------------------------------------------------
void write_kv_cache_cpu(const WriteKVCacheArgs& args);
// Runs a validated plan's params (AttentionPlan::run is the entry point).
void paged_attention_cpu(const AttentionParams& params);
// The CPU plan's check of the step's host arrays: query_start_loc, context_lens, every block id.
void check_attention_batch_cpu(const AttentionParams& params);
// Copies whole blocks within each cache array. caches: [num_caches] base pointers, each an array
// [num_blocks, block_bytes]; pairs: [num_pairs, 2] (src, dst) block ids.
void copy_blocks_cpu(void* const* caches, int num_caches, int64_t num_blocks, int64_t block_bytes,
                     const int32_t* pairs, int num_pairs);

// ---- CUDA implementations (throw std::runtime_error when built without CUDA) ----------------------
void write_kv_cache_cuda(const WriteKVCacheArgs& args, cudaStream_t stream);
void paged_attention_cuda(const AttentionParams& params, cudaStream_t stream);
// caches: device array [num_caches] of base pointers (each [num_blocks, block_bytes]);
// pairs: device array [num_pairs, 2] of (src, dst) block ids. block_bytes must be a multiple of 16.
void copy_blocks_cuda(void* const* caches, int num_caches, int64_t block_bytes, const int32_t* pairs,
                      int num_pairs, cudaStream_t stream);
// Moves whole blocks between two caches (device <-> pinned host, or device <-> device), one
// cudaMemcpyAsync per pair per cache. src_caches / dst_caches: host arrays [num_caches] of base
// pointers (each [num_blocks, block_bytes]); pairs: host array [num_pairs, 2] of (src, dst) ids.
void swap_blocks_cuda(void* const* src_caches, void* const* dst_caches, int num_caches, int64_t block_bytes,
                      const int32_t* pairs, int num_pairs, cudaStream_t stream);
// Throws a clear error when CUDA device `device` cannot run pagedcore's kernels: compute
// capability below kMinComputeCapability (pagedcore/supported.h), or no code for it in this build.
void check_cuda_device(int device);
// The CUDA architectures this build holds code for ("80-real,86-real,89-real,90"), "" without CUDA.
std::string cuda_build_architectures();
// The kernel path decode attention of this shape takes on the current device: "hopper" (bulk
// copies; sm_90 code on a 9.0+ GPU) or "ampere" (cp.async; every GPU, and PAGEDCORE_KERNEL_PATH=ampere).
std::string cuda_decode_attention_path(DType dtype, int head_dim, int block_size);
// Where the CPU kernels run their threads: "openmp <runtime library path>" (the OpenMP runtime
// already in the process, torch's) or "own pool" (none loaded, or PAGEDCORE_OWN_THREADS=1), and
// how many threads they use.
std::string cpu_parallel_backend();
int cpu_num_threads();
// The instruction-set variant the CPU kernels run ("baseline", "avx2" or "avx512": the widest this
// CPU supports, or PAGEDCORE_CPU_ISA; all give bit-identical results), and those this CPU can run.
std::string cpu_isa();
std::vector<std::string> cpu_supported_isas();
// Keeps memory the process frees for reuse instead of returning it to the kernel (glibc's malloc:
// blocks up to mmap_threshold bytes come from the heap, up to 64 MiB in threads other than the main
// one, whose arenas glibc caps; up to twice the threshold of free heap top is kept), so that the CPU
// engine's per-layer tensors are not faulted in again every step. Process-wide, and never undone:
// the heap keeps its high-water mark. Returns the threshold set (32 MiB where an older glibc
// refuses more), 0 when nothing was changed: another C library or an allocator preloaded in front
// of glibc's, a threshold outside (0, 512 MiB], PAGEDCORE_KEEP_FREED_MEMORY=0, or malloc settings of
// the user's own (GLIBC_TUNABLES with glibc.malloc.*, any MALLOC_* variable). Throws
// std::invalid_argument for a PAGEDCORE_KEEP_FREED_MEMORY other than 0 or 1.
int64_t cpu_keep_freed_memory(int64_t mmap_threshold);
// Decode split count that fills the device (waves of CTAs) for this batch, in [1, kMaxAttentionSplits].
// dtype: what the KV cache holds (the model's dtype, or kFloat8E4M3: its kernels fit other CTA counts).
int cuda_recommended_num_splits(int num_seqs, int num_kv_heads, int num_heads, int head_dim, DType dtype,
                                int max_context_len);

}  // namespace pagedcore
