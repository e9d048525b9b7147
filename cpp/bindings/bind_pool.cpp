// Bindings of the block pool, block tables and memory plan.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <vector>

#include "bindings.h"
#include "pagedcore/block_pool.h"
#include "pagedcore/block_tables.h"
#include "pagedcore/memory_plan.h"

namespace py = pybind11;

namespace pagedcore::bindings {
namespace {

py::list copies_to_list(const std::vector<BlockCopy>& copies) {
  py::list out;
  for (const BlockCopy& c : copies) out.append(py::make_tuple(c.src, c.dst));
  return out;
}

}  // namespace

void bind_pool(py::module_& m) {
  using release_gil = py::call_guard<py::gil_scoped_release>;

  py::class_<BlockPool>(m, "BlockPool",
                        "Fixed pool of KV blocks with reference counts, free lists and a prefix-cache map.")
      .def(py::init<int, int, int>(), py::arg("num_blocks"), py::arg("block_size"), py::arg("hash_bits") = 64)
      .def_property_readonly("num_blocks", &BlockPool::num_blocks)
      .def_property_readonly("block_size", &BlockPool::block_size)
      .def_property_readonly("num_free_blocks", &BlockPool::num_free_blocks)
      .def_property_readonly("num_cached_free_blocks", &BlockPool::num_cached_free_blocks)
      .def_property_readonly("num_used_blocks", &BlockPool::num_used_blocks)
      .def("allocate", &BlockPool::allocate, "Block id with ref count 1, or None when the pool is exhausted.")
      .def("retain", &BlockPool::retain, py::arg("block"))
      .def("release", &BlockPool::release, py::arg("block"))
      .def("ref_count", &BlockPool::ref_count, py::arg("block"))
      .def("is_cached", &BlockPool::is_cached, py::arg("block"))
      .def("uncached_free_blocks", &BlockPool::uncached_free_blocks)
      .def("cached_free_blocks", &BlockPool::cached_free_blocks)
      .def("check_invariants", &BlockPool::check_invariants, release_gil());

  py::class_<PoolStats>(m, "PoolStats")
      .def_readonly("num_blocks", &PoolStats::num_blocks)
      .def_readonly("num_used_blocks", &PoolStats::num_used_blocks)
      .def_readonly("num_free_blocks", &PoolStats::num_free_blocks)
      .def_readonly("num_cached_free_blocks", &PoolStats::num_cached_free_blocks)
      .def_readonly("num_sequences", &PoolStats::num_sequences)
      .def_readonly("num_prefix_queries", &PoolStats::num_prefix_queries)
      .def_readonly("num_prefix_query_tokens", &PoolStats::num_prefix_query_tokens)
      .def_readonly("num_prefix_hit_tokens", &PoolStats::num_prefix_hit_tokens)
      .def_property_readonly("prefix_hit_rate", [](const PoolStats& s) {
        return s.num_prefix_query_tokens == 0
                   ? 0.0 : static_cast<double>(s.num_prefix_hit_tokens) / s.num_prefix_query_tokens;
      })
      .def("__repr__", [](const PoolStats& s) {
        return "PoolStats(num_blocks=" + std::to_string(s.num_blocks) + ", used=" + std::to_string(s.num_used_blocks) +
               ", free=" + std::to_string(s.num_free_blocks) + ", cached_free=" +
               std::to_string(s.num_cached_free_blocks) + ", sequences=" + std::to_string(s.num_sequences) +
               ", prefix_hit_tokens=" + std::to_string(s.num_prefix_hit_tokens) + "/" +
               std::to_string(s.num_prefix_query_tokens) + ")";
      });

  py::class_<BlockTables>(m, "BlockTables",
                          "Per-sequence block tables over a BlockPool: prefix caching, fork and copy-on-write. "
                          "Not thread-safe: use one instance from one thread.")
      .def(py::init<int, int, bool, int>(), py::arg("num_blocks"), py::arg("block_size"),
           py::arg("enable_prefix_caching") = true, py::arg("hash_bits") = 64)
      .def_property_readonly("block_size", &BlockTables::block_size)
      .def_property_readonly("prefix_caching_enabled", &BlockTables::prefix_caching_enabled)
      .def_property_readonly("pool", &BlockTables::pool, py::return_value_policy::reference_internal)
      .def("add_sequence", &BlockTables::add_sequence, py::arg("seq_id"), py::arg("extra_key") = "",
           py::arg("max_num_tokens") = 0)
      .def("has_sequence", &BlockTables::has_sequence, py::arg("seq_id"))
      .def("__contains__", &BlockTables::has_sequence)
      .def("__len__", &BlockTables::num_sequences)
      .def("cached_prefix_length",
           [](const BlockTables& t, const std::vector<int32_t>& prompt, const std::string& extra_key) {
             return t.cached_prefix_length(prompt, extra_key);
           },
           py::arg("prompt"), py::arg("extra_key") = "", release_gil())
      .def("match_prefix",
           [](BlockTables& t, SeqId seq, const std::vector<int32_t>& prompt) { return t.match_prefix(seq, prompt, true); },
           py::arg("seq_id"), py::arg("prompt"), release_gil())
      .def("num_blocks_needed", &BlockTables::num_blocks_needed, py::arg("seq_id"), py::arg("num_new_tokens"))
      .def("can_append", &BlockTables::can_append, py::arg("seq_id"), py::arg("num_new_tokens"))
      .def("append",
           [](BlockTables& t, SeqId seq, const std::vector<int32_t>& tokens) -> std::optional<py::list> {
             std::vector<BlockCopy> copies;
             if (!t.append(seq, tokens, copies)) return std::nullopt;
             return copies_to_list(copies);
           },
           py::arg("seq_id"), py::arg("tokens"),
           "Reserve slots for tokens. Returns the copy-on-write (src, dst) pairs, or None when the pool "
           "has too few free blocks (nothing changed).")
      .def("fork", &BlockTables::fork, py::arg("parent"), py::arg("child"))
      .def("free", &BlockTables::free, py::arg("seq_id"))
      .def("num_tokens", &BlockTables::num_tokens, py::arg("seq_id"))
      .def("blocks", &BlockTables::blocks, py::arg("seq_id"))
      .def("num_registered_blocks", &BlockTables::num_registered_blocks, py::arg("seq_id"),
           "Leading blocks registered in the prefix cache (or taken from it).")
      .def("unregistered_tokens", &BlockTables::unregistered_tokens, py::arg("seq_id"),
           "The tokens after the registered blocks, kept until their blocks are registered (the caller "
           "keeps the sequence's tokens); empty without prefix caching.")
      .def("slot", &BlockTables::slot, py::arg("seq_id"), py::arg("position"))
      .def("stats", &BlockTables::stats)
      .def("check_invariants", &BlockTables::check_invariants, release_gil());

  py::class_<KVCacheShape>(m, "KVCacheShape")
      .def(py::init([](int num_layers, int num_kv_heads, int head_dim, int dtype_bytes, int block_size) {
             return KVCacheShape{num_layers, num_kv_heads, head_dim, dtype_bytes, block_size};
           }),
           py::arg("num_layers"), py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("dtype_bytes"),
           py::arg("block_size"))
      .def_readonly("num_layers", &KVCacheShape::num_layers)
      .def_readonly("num_kv_heads", &KVCacheShape::num_kv_heads)
      .def_readonly("head_dim", &KVCacheShape::head_dim)
      .def_readonly("dtype_bytes", &KVCacheShape::dtype_bytes)
      .def_readonly("block_size", &KVCacheShape::block_size);

  py::class_<MemoryPlan>(m, "MemoryPlan")
      .def_readonly("shape", &MemoryPlan::shape)
      .def_readonly("budget_bytes", &MemoryPlan::budget_bytes)
      .def_readonly("bytes_per_token", &MemoryPlan::bytes_per_token)
      .def_readonly("bytes_per_block", &MemoryPlan::bytes_per_block)
      .def_readonly("num_blocks", &MemoryPlan::num_blocks)
      .def_readonly("token_capacity", &MemoryPlan::token_capacity)
      .def_readonly("used_bytes", &MemoryPlan::used_bytes)
      .def("summary", &MemoryPlan::summary)
      .def("__repr__", &MemoryPlan::summary);

  m.def("plan_kv_memory", &plan_kv_memory, py::arg("shape"), py::arg("budget_bytes"),
        "How many KV blocks a byte budget buys; ValueError when not even one block fits.");
}

}  // namespace pagedcore::bindings
