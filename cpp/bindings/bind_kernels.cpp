// Bindings of the kernels: integers in (data pointers, strides, sizes, a CUDA stream handle or
// None for the CPU path), no torch. python/pagedcore/ops.py checks tensors and calls these.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <utility>
#include <vector>

#include "bindings.h"
#include "pagedcore/kernels.h"
#include "pagedcore/layer_kernels.h"
#include "pagedcore/sampling.h"
#include "pagedcore/supported.h"

namespace py = pybind11;

namespace pagedcore::bindings {
namespace {

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

cudaStream_t stream_of(int64_t handle) { return reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(handle)); }

}  // namespace

void bind_kernels(py::module_& m) {
  py::enum_<DType>(m, "DType", "Element types of the kernels")
      .value("float32", DType::kFloat32)
      .value("float16", DType::kFloat16)
      .value("bfloat16", DType::kBFloat16)
      .value("float8_e4m3fn", DType::kFloat8E4M3);

  // The dtypes each device's kernels take (pagedcore/supported.h); ops.py derives its checks from them.
  m.attr("SUPPORTED_CUDA_DTYPES") =
      py::tuple(py::cast(std::vector<DType>(kSupportedCudaDTypes.begin(), kSupportedCudaDTypes.end())));
  m.attr("SUPPORTED_CPU_DTYPES") =
      py::tuple(py::cast(std::vector<DType>(kSupportedCpuDTypes.begin(), kSupportedCpuDTypes.end())));
  m.attr("MAX_ATTENTION_SPLITS") = kMaxAttentionSplits;

  m.def(
      "write_kv_cache",
      [](DType dtype, uintptr_t k, int64_t k_stride_token, int64_t k_stride_head, uintptr_t v, int64_t v_stride_token,
         int64_t v_stride_head, uintptr_t k_cache, uintptr_t v_cache, uintptr_t slot_mapping, int num_tokens,
         int num_kv_heads, int head_dim, int block_size, int64_t num_blocks, std::optional<int64_t> stream,
         std::optional<DType> cache_dtype, float k_scale, float v_scale) {
        WriteKVCacheArgs a{dtype, num_tokens, num_kv_heads, head_dim, block_size, num_blocks,
                           ptr<const void>(k), k_stride_token, k_stride_head,
                           ptr<const void>(v), v_stride_token, v_stride_head,
                           ptr<void>(k_cache), ptr<void>(v_cache), ptr<const int32_t>(slot_mapping),
                           cache_dtype.value_or(dtype), k_scale, v_scale};
        py::gil_scoped_release release;
        if (stream) write_kv_cache_cuda(a, stream_of(*stream));
        else write_kv_cache_cpu(a);
      },
      py::arg("dtype"), py::arg("k"), py::arg("k_stride_token"), py::arg("k_stride_head"), py::arg("v"),
      py::arg("v_stride_token"), py::arg("v_stride_head"), py::arg("k_cache"), py::arg("v_cache"),
      py::arg("slot_mapping"), py::arg("num_tokens"), py::arg("num_kv_heads"), py::arg("head_dim"),
      py::arg("block_size"), py::arg("num_blocks"), py::arg("stream"), py::arg("cache_dtype") = py::none(),
      py::arg("k_scale") = 1.0f, py::arg("v_scale") = 1.0f,
      "Scatter K/V rows into their cache slots (raw pointers; stream None = CPU; an FP8 cache stores x / scale).");

  py::class_<AttentionPlan>(m, "AttentionPlan",
                            "One step's paged attention: validated once, run by every layer (raw pointers).")
      .def(py::init([](DType dtype, int num_seqs, int num_tokens, int num_heads, int num_kv_heads, int head_dim,
                       int block_size, int64_t num_blocks, uintptr_t block_tables, int64_t block_tables_stride,
                       int max_blocks_per_seq, uintptr_t context_lens, uintptr_t query_start_loc, float scale,
                       int max_query_len, int max_context_len, int num_splits, uintptr_t workspace,
                       size_t workspace_bytes, bool cuda, std::optional<DType> cache_dtype) {
             const AttentionStep step{dtype, num_seqs, num_tokens, num_heads, num_kv_heads, head_dim, block_size,
                                      num_blocks, ptr<const int32_t>(block_tables), block_tables_stride,
                                      max_blocks_per_seq, ptr<const int32_t>(context_lens),
                                      ptr<const int32_t>(query_start_loc), scale, max_query_len, max_context_len,
                                      num_splits, ptr<void>(workspace), workspace_bytes,
                                      cache_dtype.value_or(dtype)};
             py::gil_scoped_release release;
             return AttentionPlan(step, cuda);
           }),
           py::arg("dtype"), py::arg("num_seqs"), py::arg("num_tokens"), py::arg("num_heads"), py::arg("num_kv_heads"),
           py::arg("head_dim"), py::arg("block_size"), py::arg("num_blocks"), py::arg("block_tables"),
           py::arg("block_tables_stride"), py::arg("max_blocks_per_seq"), py::arg("context_lens"),
           py::arg("query_start_loc"), py::arg("scale"), py::arg("max_query_len"), py::arg("max_context_len"),
           py::arg("num_splits"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("cuda"),
           py::arg("cache_dtype") = py::none())
      .def_property_readonly("num_splits", [](const AttentionPlan& p) { return p.params().num_splits; },
                             "Split-KV partitions the CUDA decode launch takes (1 on CPU).")
      .def_property_readonly("cuda", &AttentionPlan::cuda)
      .def(
          "run",
          [](const AttentionPlan& plan, uintptr_t q, int64_t q_stride_token, int64_t q_stride_head, uintptr_t k_cache,
             uintptr_t v_cache, uintptr_t out, int64_t out_stride_token, int64_t out_stride_head,
             std::optional<int64_t> stream, float k_scale, float v_scale) {
            const AttentionLayer layer{ptr<const void>(q), q_stride_token, q_stride_head, ptr<const void>(k_cache),
                                       ptr<const void>(v_cache), ptr<void>(out), out_stride_token, out_stride_head,
                                       k_scale, v_scale};
            if (plan.cuda() != stream.has_value()) {
              throw std::invalid_argument(plan.cuda() ? "a CUDA attention plan runs on a stream, got None"
                                                      : "a CPU attention plan runs without a stream");
            }
            py::gil_scoped_release release;
            plan.run(layer, stream ? stream_of(*stream) : nullptr);
          },
          py::arg("q"), py::arg("q_stride_token"), py::arg("q_stride_head"), py::arg("k_cache"), py::arg("v_cache"),
          py::arg("out"), py::arg("out_stride_token"), py::arg("out_stride_head"), py::arg("stream"),
          py::arg("k_scale") = 1.0f, py::arg("v_scale") = 1.0f,
          "Attention of one layer over the plan's step (an FP8 cache's values times k_scale / v_scale).");

  m.def("paged_attention_workspace_bytes", &paged_attention_workspace_bytes, py::arg("num_seqs"),
        py::arg("num_heads"), py::arg("head_dim"), py::arg("num_splits"),
        "Bytes of the split-KV workspace paged_attention needs (0 for one split).");

  m.def("check_cuda_device", &check_cuda_device, py::arg("device"),
        "Raises RuntimeError naming the device when pagedcore's CUDA kernels cannot run on it.");
  m.def("cuda_decode_attention_path", &cuda_decode_attention_path, py::arg("dtype"), py::arg("head_dim"),
        py::arg("block_size"), "'hopper' or 'ampere': the kernel path decode attention takes on the current device.");
  m.def("cuda_build_architectures", &cuda_build_architectures,
        "CUDA architectures this build holds code for ('' without CUDA).");
  m.def("cpu_parallel_backend", &cpu_parallel_backend,
        "Where the CPU kernels run their threads: 'openmp <runtime path>' (torch's OpenMP threads) or 'own pool'.");
  m.def("cpu_num_threads", &cpu_num_threads, "Threads the CPU kernels use (follows torch.set_num_threads).");
  m.def("cpu_isa", &cpu_isa,
        "The instruction-set variant the CPU kernels run: 'baseline', 'avx2' or 'avx512' (PAGEDCORE_CPU_ISA overrides).");
  m.def("cpu_supported_isas", &cpu_supported_isas, "The CPU kernel variants this CPU can run, narrowest first.");
  m.def("cpu_keep_freed_memory", &cpu_keep_freed_memory, py::arg("mmap_threshold"),
        "Keeps freed memory in the heap (glibc malloc thresholds) for the CPU engine; returns the threshold set or 0.");

  m.def(
      "cuda_recommended_num_splits",
      [](int num_seqs, int num_kv_heads, int num_heads, int head_dim, DType dtype, int max_context_len) {
        py::gil_scoped_release release;
        return cuda_recommended_num_splits(num_seqs, num_kv_heads, num_heads, head_dim, dtype, max_context_len);
      },
      py::arg("num_seqs"), py::arg("num_kv_heads"), py::arg("num_heads"), py::arg("head_dim"), py::arg("dtype"),
      py::arg("max_context_len"), "Decode split-KV count that fills the current CUDA device.");

  m.def(
      "copy_blocks",
      [](uintptr_t caches, int num_caches, int64_t num_blocks, int64_t block_bytes, uintptr_t pairs, int num_pairs,
         std::optional<int64_t> stream) {
        py::gil_scoped_release release;
        if (stream) copy_blocks_cuda(ptr<void* const>(caches), num_caches, block_bytes, ptr<const int32_t>(pairs), num_pairs,
                                     stream_of(*stream));
        else copy_blocks_cpu(ptr<void* const>(caches), num_caches, num_blocks, block_bytes, ptr<const int32_t>(pairs), num_pairs);
      },
      py::arg("caches"), py::arg("num_caches"), py::arg("num_blocks"), py::arg("block_bytes"), py::arg("pairs"),
      py::arg("num_pairs"), py::arg("stream"),
      "Copy whole blocks inside each cache array. caches: address of an int64 array of base pointers (device "
      "memory for CUDA); pairs: address of int32 [num_pairs, 2] (src, dst).");

  m.def(
      "swap_blocks",
      [](std::vector<uintptr_t> src_caches, std::vector<uintptr_t> dst_caches, int64_t block_bytes,
         std::vector<std::pair<int32_t, int32_t>> pairs, int64_t stream) {
        if (src_caches.size() != dst_caches.size()) {
          throw std::invalid_argument("swap_blocks: src_caches and dst_caches must have the same length");
        }
        std::vector<int32_t> flat;
        for (const auto& [s, d] : pairs) {
          flat.push_back(s);
          flat.push_back(d);
        }
        py::gil_scoped_release release;
        swap_blocks_cuda(reinterpret_cast<void* const*>(src_caches.data()),
                         reinterpret_cast<void* const*>(dst_caches.data()), static_cast<int>(src_caches.size()),
                         block_bytes, flat.data(), static_cast<int>(pairs.size()), stream_of(stream));
      },
      py::arg("src_caches"), py::arg("dst_caches"), py::arg("block_bytes"), py::arg("pairs"), py::arg("stream"),
      "Move whole blocks between caches (device <-> pinned host) with cudaMemcpyAsync on the stream.");

  // ---- fused layer kernels (pagedcore/layer_kernels.h); address 0 = absent optional pointer ----
  m.def(
      "add_rms_norm",
      [](DType dtype, uintptr_t x, int64_t x_stride_token, uintptr_t residual, uintptr_t weight, uintptr_t out,
         int num_tokens, int hidden_size, float eps, std::optional<int64_t> stream) {
        AddRMSNormArgs a{dtype, num_tokens, hidden_size, ptr<const void>(x), x_stride_token, ptr<void>(residual),
                         ptr<const void>(weight), ptr<void>(out), eps};
        py::gil_scoped_release release;
        if (stream) add_rms_norm_cuda(a, stream_of(*stream));
        else add_rms_norm_cpu(a);
      },
      py::arg("dtype"), py::arg("x"), py::arg("x_stride_token"), py::arg("residual"), py::arg("weight"),
      py::arg("out"), py::arg("num_tokens"), py::arg("hidden_size"), py::arg("eps"), py::arg("stream"),
      "residual += x (when residual != 0), then out = weight * rmsnorm(residual or x).");

  m.def(
      "sample_tokens",
      [](uintptr_t scores, int64_t scores_stride, uintptr_t raw, int64_t raw_stride, uintptr_t inv_temperature,
         uintptr_t noise, uintptr_t allowed, int64_t allowed_stride, uintptr_t allowed_rows, uintptr_t token_ids,
         uintptr_t logprobs, int num_rows, int vocab_size, std::optional<int64_t> stream) {
        SampleTokensArgs a{num_rows, vocab_size, ptr<const float>(scores), scores_stride, ptr<const float>(raw),
                           raw_stride, ptr<const float>(inv_temperature), ptr<const int64_t>(noise),
                           ptr<const int32_t>(allowed), allowed_stride, ptr<const int32_t>(allowed_rows),
                           ptr<int64_t>(token_ids), ptr<float>(logprobs)};
        py::gil_scoped_release release;
        if (stream) sample_tokens_cuda(a, stream_of(*stream));
        else sample_tokens_cpu(a);
      },
      py::arg("scores"), py::arg("scores_stride"), py::arg("raw"), py::arg("raw_stride"), py::arg("inv_temperature"),
      py::arg("noise"), py::arg("allowed"), py::arg("allowed_stride"), py::arg("allowed_rows"), py::arg("token_ids"),
      py::arg("logprobs"), py::arg("num_rows"), py::arg("vocab_size"),
      py::arg("stream"), "The fused sampling pass (pagedcore/sampling.h): each row's token and its raw logprob.");

  m.def(
      "silu_and_mul",
      [](DType dtype, uintptr_t x, int64_t x_stride_token, uintptr_t out, int num_tokens, int intermediate_size,
         std::optional<int64_t> stream) {
        SiluAndMulArgs a{dtype, num_tokens, intermediate_size, ptr<const void>(x), x_stride_token, ptr<void>(out)};
        py::gil_scoped_release release;
        if (stream) silu_and_mul_cuda(a, stream_of(*stream));
        else silu_and_mul_cpu(a);
      },
      py::arg("dtype"), py::arg("x"), py::arg("x_stride_token"), py::arg("out"), py::arg("num_tokens"),
      py::arg("intermediate_size"), py::arg("stream"), "out = silu(gate) * up with x = [gate, up].");

  m.def(
      "qk_norm_rope",
      [](DType dtype, uintptr_t q, int64_t q_stride_token, int64_t q_stride_head, uintptr_t k, int64_t k_stride_token,
         int64_t k_stride_head, uintptr_t positions, uintptr_t cos, uintptr_t sin, int64_t rope_stride,
         int64_t max_position, uintptr_t q_norm_weight, uintptr_t k_norm_weight, int num_tokens, int num_heads,
         int num_kv_heads, int head_dim, float eps, std::optional<int64_t> stream) {
        QKNormRopeArgs a{dtype, num_tokens, num_heads, num_kv_heads, head_dim, ptr<void>(q), q_stride_token,
                         q_stride_head, ptr<void>(k), k_stride_token, k_stride_head, ptr<const int32_t>(positions),
                         ptr<const float>(cos), ptr<const float>(sin), rope_stride, max_position,
                         ptr<const void>(q_norm_weight), ptr<const void>(k_norm_weight), eps};
        py::gil_scoped_release release;
        if (stream) qk_norm_rope_cuda(a, stream_of(*stream));
        else qk_norm_rope_cpu(a);
      },
      py::arg("dtype"), py::arg("q"), py::arg("q_stride_token"), py::arg("q_stride_head"), py::arg("k"),
      py::arg("k_stride_token"), py::arg("k_stride_head"), py::arg("positions"), py::arg("cos"), py::arg("sin"),
      py::arg("rope_stride"), py::arg("max_position"), py::arg("q_norm_weight"), py::arg("k_norm_weight"),
      py::arg("num_tokens"), py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("eps"),
      py::arg("stream"), "In place: optional per-head RMSNorm of q and k, then the rotary embedding.");
}

}  // namespace pagedcore::bindings
