// Bindings of the scheduler and its step plan (arrays handed to numpy without copies).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings.h"
#include "pagedcore/scheduler.h"
#include "pagedcore/step_plan.h"

namespace py = pybind11;

namespace pagedcore::bindings {
namespace {

// A read-only numpy view of `data` that keeps the owning plan (`owner`) alive.
template <typename T>
py::array view(const std::vector<T>& data, std::vector<py::ssize_t> shape, py::handle owner) {
  std::vector<py::ssize_t> strides(shape.size(), sizeof(T));
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * shape[i + 1];
  py::array_t<T> arr(shape, strides, data.data(), owner);
  py::detail::array_proxy(arr.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return std::move(arr);
}

template <typename T>
auto flat(std::vector<T> StepPlan::*member) {
  return [member](py::object self) {
    const StepPlan& p = self.cast<const StepPlan&>();
    return view((p.*member), {static_cast<py::ssize_t>((p.*member).size())}, self);
  };
}

template <typename T>
auto pairs(std::vector<T> StepPlan::*member) {
  return [member](py::object self) {
    const StepPlan& p = self.cast<const StepPlan&>();
    return view((p.*member), {static_cast<py::ssize_t>((p.*member).size() / 2), 2}, self);
  };
}

}  // namespace

void bind_scheduler(py::module_& m) {
  using release_gil = py::call_guard<py::gil_scoped_release>;

  py::enum_<PreemptionMode>(m, "PreemptionMode")
      .value("RECOMPUTE", PreemptionMode::kRecompute)
      .value("SWAP", PreemptionMode::kSwap);
  py::enum_<FinishReason>(m, "FinishReason")
      .value("NONE", FinishReason::kNone)
      .value("STOP", FinishReason::kStop)
      .value("LENGTH", FinishReason::kLength)
      .value("ABORT", FinishReason::kAbort);
  py::enum_<EventKind>(m, "EventKind")
      .value("TOKEN", EventKind::kToken)
      .value("FINISHED", EventKind::kFinished)
      .value("PREEMPTED", EventKind::kPreempted)
      .value("RESUMED", EventKind::kResumed);

  py::class_<SchedulerConfig>(m, "SchedulerConfig")
      .def(py::init([](int num_blocks, int block_size, int max_num_seqs, int max_num_batched_tokens,
                       int max_model_len, bool enable_prefix_caching, PreemptionMode preemption_mode,
                       int num_host_blocks) {
             return SchedulerConfig{num_blocks, block_size, max_num_seqs, max_num_batched_tokens, max_model_len,
                                    enable_prefix_caching, preemption_mode, num_host_blocks};
           }),
           // No defaults: Python passes every setting from EngineArgs, the one place they live.
           py::kw_only(), py::arg("num_blocks"), py::arg("block_size"), py::arg("max_num_seqs"),
           py::arg("max_num_batched_tokens"), py::arg("max_model_len"), py::arg("enable_prefix_caching"),
           py::arg("preemption_mode"), py::arg("num_host_blocks") = 0)
      .def_readonly("num_blocks", &SchedulerConfig::num_blocks)
      .def_readonly("block_size", &SchedulerConfig::block_size)
      .def_readonly("max_num_seqs", &SchedulerConfig::max_num_seqs)
      .def_readonly("max_num_batched_tokens", &SchedulerConfig::max_num_batched_tokens)
      .def_readonly("max_model_len", &SchedulerConfig::max_model_len)
      .def_readonly("enable_prefix_caching", &SchedulerConfig::enable_prefix_caching)
      .def_readonly("preemption_mode", &SchedulerConfig::preemption_mode)
      .def_readonly("num_host_blocks", &SchedulerConfig::num_host_blocks);

  py::class_<RequestParams>(m, "RequestParams")
      .def(py::init([](int max_tokens, int min_tokens, std::vector<int32_t> eos_token_ids,
                       std::vector<int32_t> stop_token_ids, bool ignore_eos, int n, int priority, double arrival_time,
                       std::string cache_salt) {
             return RequestParams{max_tokens, min_tokens, std::move(eos_token_ids), std::move(stop_token_ids),
                                  ignore_eos, n, priority, arrival_time, std::move(cache_salt)};
           }),
           py::kw_only(), py::arg("max_tokens") = 16, py::arg("min_tokens") = 0,
           py::arg("eos_token_ids") = std::vector<int32_t>{}, py::arg("stop_token_ids") = std::vector<int32_t>{},
           py::arg("ignore_eos") = false, py::arg("n") = 1, py::arg("priority") = 0, py::arg("arrival_time") = 0.0,
           py::arg("cache_salt") = "")
      .def_readonly("max_tokens", &RequestParams::max_tokens)
      .def_readonly("min_tokens", &RequestParams::min_tokens)
      .def_readonly("eos_token_ids", &RequestParams::eos_token_ids)
      .def_readonly("stop_token_ids", &RequestParams::stop_token_ids)
      .def_readonly("ignore_eos", &RequestParams::ignore_eos)
      .def_readonly("n", &RequestParams::n)
      .def_readonly("priority", &RequestParams::priority)
      .def_readonly("arrival_time", &RequestParams::arrival_time)
      .def_readonly("cache_salt", &RequestParams::cache_salt);

  py::class_<SchedulerEvent>(m, "SchedulerEvent")
      .def_readonly("kind", &SchedulerEvent::kind)
      .def_readonly("request_id", &SchedulerEvent::request_id)
      .def_readonly("seq_index", &SchedulerEvent::seq_index)
      .def_readonly("token", &SchedulerEvent::token)
      .def_readonly("finish_reason", &SchedulerEvent::finish_reason)
      .def_readonly("num_cached_tokens", &SchedulerEvent::num_cached_tokens)
      .def("__repr__", [](const SchedulerEvent& e) {
        return "SchedulerEvent(kind=" + std::to_string(static_cast<int>(e.kind)) + ", request_id=" +
               std::to_string(e.request_id) + ", seq_index=" + std::to_string(e.seq_index) +
               ", token=" + std::to_string(e.token) + ", finish_reason=" +
               std::to_string(static_cast<int>(e.finish_reason)) + ")";
      });

  py::class_<SchedulerStats>(m, "SchedulerStats")
      .def_readonly("num_running", &SchedulerStats::num_running)
      .def_readonly("num_waiting", &SchedulerStats::num_waiting)
      .def_readonly("num_swapped", &SchedulerStats::num_swapped)
      .def_readonly("num_used_blocks", &SchedulerStats::num_used_blocks)
      .def_readonly("num_blocks", &SchedulerStats::num_blocks)
      .def_readonly("kv_usage", &SchedulerStats::kv_usage)
      .def_readonly("prefix_hit_rate", &SchedulerStats::prefix_hit_rate)
      .def_readonly("num_preemptions", &SchedulerStats::num_preemptions)
      .def_readonly("num_prefix_hit_tokens", &SchedulerStats::num_prefix_hit_tokens)
      .def_readonly("num_prefix_query_tokens", &SchedulerStats::num_prefix_query_tokens)
      .def_readonly("num_steps", &SchedulerStats::num_steps);

  py::class_<StepPlan, std::shared_ptr<StepPlan>>(m, "StepPlan",
                                                   "One step's work as read-only int32 numpy views (no copies).")
      .def_readonly("num_seqs", &StepPlan::num_seqs)
      .def_readonly("num_tokens", &StepPlan::num_tokens)
      .def_readonly("num_decode_seqs", &StepPlan::num_decode_seqs)
      .def_readonly("max_blocks_per_seq", &StepPlan::max_blocks_per_seq)
      .def_property_readonly("num_samples", &StepPlan::num_samples)
      .def_property_readonly("input_ids", flat(&StepPlan::input_ids), "[num_tokens]")
      .def_property_readonly("positions", flat(&StepPlan::positions), "[num_tokens]")
      .def_property_readonly("slot_mapping", flat(&StepPlan::slot_mapping), "[num_tokens], -1 = padding")
      .def_property_readonly("block_tables",
                             [](py::object self) {
                               const StepPlan& p = self.cast<const StepPlan&>();
                               return view(p.block_tables, {p.num_seqs, p.max_blocks_per_seq}, self);
                             },
                             "[num_seqs, max_blocks_per_seq], padded with -1")
      .def_property_readonly("context_lens", flat(&StepPlan::context_lens), "[num_seqs]")
      .def_property_readonly("query_start_loc", flat(&StepPlan::query_start_loc), "[num_seqs + 1]")
      .def_property_readonly("seq_request_ids", flat(&StepPlan::seq_request_ids), "[num_seqs] int64")
      .def_property_readonly("logits_indices", flat(&StepPlan::logits_indices), "[num_samples]")
      .def_property_readonly("sample_request_ids", flat(&StepPlan::sample_request_ids), "[num_samples] int64")
      .def_property_readonly("sample_seq_indices", flat(&StepPlan::sample_seq_indices), "[num_samples]")
      .def_property_readonly("num_deferred", &StepPlan::num_deferred)
      .def_property_readonly("deferred_input_rows", flat(&StepPlan::deferred_input_rows),
                             "[num_deferred] token rows whose input id the previous, uncommitted step sampled")
      .def_property_readonly("deferred_input_samples", flat(&StepPlan::deferred_input_samples),
                             "[num_deferred] that token's sample row in the previous plan")
      .def_property_readonly("copy_pairs", pairs(&StepPlan::copy_pairs), "[num_copies, 2] (src, dst)")
      .def_property_readonly("swap_out_pairs", pairs(&StepPlan::swap_out_pairs), "[n, 2] (device, host)")
      .def_property_readonly("swap_in_pairs", pairs(&StepPlan::swap_in_pairs), "[n, 2] (host, device)")
      .def_property_readonly("max_query_len", &max_query_len, "longest query of the step (1 = decode only)")
      .def_property_readonly("max_context_len", &max_context_len, "longest context_lens entry")
      .def("packed_layout", [](const StepPlan& p) { return packed_layout(p); },
           "Offsets of the forward pass's arrays in one int32 buffer, at the plan's own sizes.")
      .def("padded_decode_layout", &padded_decode_layout, py::arg("num_seqs"), py::arg("width"),
           "The packed layout of a decode-only plan padded to num_seqs rows and width block-table columns.")
      .def(
          "pack",
          [](const StepPlan& p, const PackedPlanLayout& layout, uintptr_t address, int64_t capacity) {
            if (capacity < layout.size) {
              throw std::invalid_argument("pack: the buffer holds " + std::to_string(capacity) +
                                          " int32 elements, the layout needs " + std::to_string(layout.size));
            }
            pack_plan(p, layout, reinterpret_cast<int32_t*>(address));
          },
          py::arg("layout"), py::arg("address"), py::arg("capacity"),
          "Writes the arrays into the int32 buffer at `address` (capacity elements), padding included.");

  m.def("plan_layout", &plan_layout, py::arg("num_seqs"), py::arg("num_tokens"), py::arg("num_samples"),
        py::arg("width"), py::arg("num_deferred"),
        "The packed layout of a plan of these sizes (what StepPlan.packed_layout gives it).");
  m.def("decode_layout", &decode_layout, py::arg("num_seqs"), py::arg("width"),
        "The packed layout every decode-only plan padded to num_seqs rows and width columns gets.");

  py::class_<PackedPlanLayout>(m, "PackedPlanLayout", "Offsets (int32 elements) of a packed step plan.")
      .def_readonly("num_seqs", &PackedPlanLayout::num_seqs)
      .def_readonly("num_tokens", &PackedPlanLayout::num_tokens)
      .def_readonly("num_samples", &PackedPlanLayout::num_samples)
      .def_readonly("width", &PackedPlanLayout::width)
      .def_readonly("input_ids", &PackedPlanLayout::input_ids)
      .def_readonly("positions", &PackedPlanLayout::positions)
      .def_readonly("slot_mapping", &PackedPlanLayout::slot_mapping)
      .def_readonly("context_lens", &PackedPlanLayout::context_lens)
      .def_readonly("query_start_loc", &PackedPlanLayout::query_start_loc)
      .def_readonly("logits_indices", &PackedPlanLayout::logits_indices)
      .def_readonly("block_tables", &PackedPlanLayout::block_tables)
      .def_readonly("num_deferred", &PackedPlanLayout::num_deferred)
      .def_readonly("deferred_input_rows", &PackedPlanLayout::deferred_input_rows)
      .def_readonly("deferred_input_samples", &PackedPlanLayout::deferred_input_samples)
      .def_readonly("size", &PackedPlanLayout::size);

  py::class_<Scheduler>(m, "Scheduler",
                        "Continuous-batching scheduler. Not thread-safe: drive it from one thread.")
      .def(py::init<const SchedulerConfig&>(), py::arg("config"))
      .def_property_readonly("config", &Scheduler::config)
      .def("add_request",
           [](Scheduler& s, RequestId id, const std::vector<int32_t>& prompt, const RequestParams& params) {
             s.add_request(id, prompt, params);
           },
           py::arg("request_id"), py::arg("prompt_token_ids"), py::arg("params"))
      .def("step",
           [](Scheduler& s) {
             std::shared_ptr<const StepPlan> plan;
             {
               py::gil_scoped_release release;
               plan = s.step();
             }
             return std::const_pointer_cast<StepPlan>(plan);
           })
      .def("commit",
           [](Scheduler& s, py::array_t<int32_t, py::array::c_style | py::array::forcecast> sampled) {
             if (sampled.ndim() != 1) throw std::invalid_argument("sampled tokens must be a 1-D array");
             std::span<const int32_t> tokens(sampled.data(), static_cast<size_t>(sampled.size()));
             py::gil_scoped_release release;
             return s.commit(tokens);
           },
           py::arg("sampled_token_ids"))
      .def_property_readonly("num_uncommitted_steps", &Scheduler::num_uncommitted_steps,
                             "Planned steps not committed yet (0, 1, or 2 in the overlapped loop).")
      .def("finish", &Scheduler::finish, py::arg("request_id"), py::arg("seq_index"),
           py::arg("reason") = FinishReason::kStop)
      .def("abort", &Scheduler::abort, py::arg("request_id"))
      .def("reset_prefix_cache", &Scheduler::reset_prefix_cache,
           "Empties the prefix cache; False (nothing changed) while requests are queued or running.")
      .def("has_unfinished", &Scheduler::has_unfinished)
      .def("has_request", &Scheduler::has_request, py::arg("request_id"))
      .def("stats", &Scheduler::stats)
      .def_property_readonly("block_tables", &Scheduler::block_tables, py::return_value_policy::reference_internal)
      .def_property_readonly("num_free_host_blocks", &Scheduler::num_free_host_blocks)
      .def("check_invariants", &Scheduler::check_invariants, release_gil());
}

}  // namespace pagedcore::bindings
