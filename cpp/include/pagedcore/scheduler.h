// Continuous-batching scheduler: admission, chunked prefill mixed with decodes, prefix-cache reuse,
// preemption (recompute or swap), n > 1 sampling through fork + copy-on-write, and the flat step
// plan the model runner executes.
//
// Protocol: add_request() any time; then repeatedly plan = step(), run the model on the plan,
// sample one token per entry of plan.sample_*, events = commit(sampled). finish() / abort() may be
// called between steps (a sequence finished or aborted after step() is skipped by commit()).
//
// Overlapped loop: step() may also be called while one step is still uncommitted (its tokens are
// being sampled on the device); commit() then applies the oldest uncommitted step. A sequence that
// sampled one token in that step is scheduled again at once (unless that token ends it by length):
// its row's input is that not-yet-known token, which the runner takes on the device
// from the previous step's sampled tokens (plan.deferred_input_rows / deferred_input_samples). If
// the token ends the sequence (EOS, stop token), commit() frees it and the next commit() skips its
// extra row. At most two steps are uncommitted at once.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "pagedcore/block_tables.h"
#include "pagedcore/step_plan.h"
#include "pagedcore/types.h"

namespace pagedcore {

using RequestId = int64_t;

enum class PreemptionMode { kRecompute, kSwap };

// The defaults serve C++ callers; the Python engine passes every field from EngineArgs
// (python/pagedcore/engine/engine_args.py), whose defaults are the product's.
struct SchedulerConfig {
  int num_blocks = 0;                    // device KV blocks
  int block_size = 16;                   // tokens per block (kSupportedBlockSizes)
  int max_num_seqs = 256;                // running sequences at most
  int max_num_batched_tokens = 8192;     // tokens computed per step at most
  int max_model_len = 0;                 // prompt + max_tokens at most
  bool enable_prefix_caching = true;
  PreemptionMode preemption_mode = PreemptionMode::kRecompute;
  int num_host_blocks = 0;               // swap space in blocks (kSwap only)
};

struct RequestParams {
  int max_tokens = 16;
  int min_tokens = 0;                    // EOS and stop tokens are ignored before this many
  std::vector<int32_t> eos_token_ids;    // finish with "stop" unless ignore_eos
  std::vector<int32_t> stop_token_ids;   // finish with "stop" (even with ignore_eos)
  bool ignore_eos = false;
  int n = 1;                             // sequences sampled from one prompt
  int priority = 0;                      // smaller runs first; preemption takes the largest first
  double arrival_time = 0.0;             // informational; FCFS uses the order of add_request
  std::string cache_salt;                // separates prefix caches (folded into block hashes)
};

enum class FinishReason : int32_t { kNone = 0, kStop = 1, kLength = 2, kAbort = 3 };
enum class EventKind : int32_t { kToken = 0, kFinished = 1, kPreempted = 2, kResumed = 3 };

struct SchedulerEvent {
  EventKind kind;
  RequestId request_id;
  int32_t seq_index;                     // which of the request's n sequences
  int32_t token = -1;                    // kToken / kFinished: the token appended (-1 when none)
  FinishReason finish_reason = FinishReason::kNone;
  int32_t num_cached_tokens = 0;         // kToken / kFinished: prompt tokens served by the prefix cache
};

struct SchedulerStats {
  int num_running = 0;
  int num_waiting = 0;
  int num_swapped = 0;
  int num_used_blocks = 0;
  int num_blocks = 0;
  double kv_usage = 0.0;                 // used / total device blocks
  double prefix_hit_rate = 0.0;          // hit tokens / looked-up prompt tokens
  int64_t num_preemptions = 0;
  int64_t num_prefix_hit_tokens = 0;
  int64_t num_prefix_query_tokens = 0;
  int64_t num_steps = 0;
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& config);

  const SchedulerConfig& config() const { return config_; }

  // Validates and queues a request. Throws std::invalid_argument naming the limit when
  // prompt + max_tokens exceeds max_model_len or the pool, or a parameter is out of range.
  void add_request(RequestId id, std::span<const int32_t> prompt, const RequestParams& params);

  // Plans the next step. The returned plan stays valid until the caller drops it.
  std::shared_ptr<const StepPlan> step();

  // Applies the tokens sampled for the oldest uncommitted plan (one per plan sample row) and returns
  // what happened; registers generated blocks in the prefix cache with what the last step() left of
  // its budget (oldest first: BlockTables::register_deferred).
  std::vector<SchedulerEvent> commit(std::span<const int32_t> sampled_tokens);
  int num_uncommitted_steps() const { return static_cast<int>(in_flight_.size()); }

  // Finishes one sequence (e.g. a stop string matched) and frees its blocks.
  void finish(RequestId id, int seq_index, FinishReason reason = FinishReason::kStop);

  // Frees every block of every sequence of the request and forgets it. Unknown ids are ignored.
  void abort(RequestId id);

  bool has_unfinished() const { return !requests_.empty(); }
  // Empties the prefix cache (vLLM's reset_prefix_cache); false, changing nothing, while requests
  // are queued or running, or between step() and commit().
  bool reset_prefix_cache() { return requests_.empty() && in_flight_.empty() && tables_.reset_prefix_cache(); }
  bool has_request(RequestId id) const { return requests_.count(id) != 0; }
  SchedulerStats stats() const;
  const BlockTables& block_tables() const { return tables_; }
  int num_free_host_blocks() const { return static_cast<int>(free_host_blocks_.size()); }

  // BlockTables invariants plus scheduler bookkeeping (queues, counts). Throws std::logic_error.
  void check_invariants() const;

 private:
  enum class Status { kWaiting, kRunning, kSwapped };

  struct Sequence {
    RequestId request_id = 0;
    int32_t seq_index = 0;
    Status status = Status::kWaiting;
    std::vector<int32_t> tokens;         // prompt + generated
    int num_prompt_tokens = 0;
    int max_tokens = 0;                  // its request's (read every step: kept here, not looked up)
    int num_computed = 0;                // tokens whose KV is in the cache or computed by a planned step
    int num_uncommitted_samples = 0;     // tokens sampled for it by planned, uncommitted steps
    int32_t last_sample_row = 0;         // its sample row in the plan it was last scheduled in
    bool table_has_pending = false;      // its block table holds the slot of a token not committed yet
    uint64_t order = 0;                  // FCFS order of the request (ties: seq_index)
    int priority = 0;
    bool forked = false;                 // its n > 1 prompt was forked into n sequences (false for n == 1)
    int num_cached_tokens = -1;          // prefix-cache hit of the first admission (-1 = not yet)
    int num_preemptions = 0;
    std::vector<int32_t> host_blocks;    // kSwapped: where its KV lives on the host
    int64_t scheduled_in_step = -1;      // step number it was last scheduled in
  };

  struct Request {
    RequestParams params;
    std::vector<SeqId> seqs;             // live sequences of this request
  };

  struct Scheduled {
    SeqId seq;
    int first_position;                  // position of its first computed token
    int num_new_tokens;
    int num_samples;                     // 0 (prefill chunk), 1, or n (the prompt of an n > 1 request)
    bool deferred_input = false;         // one token: the one sampled for it by the uncommitted step
  };

  // A planned step whose tokens are not committed yet.
  struct InFlightStep {
    std::shared_ptr<StepPlan> plan;
    std::vector<Scheduled> scheduled;
    std::vector<SchedulerEvent> events;  // preempted / resumed during its step(), reported by its commit()
  };

  bool sorts_before(SeqId a, SeqId b) const;
  void insert_sorted(std::deque<SeqId>& queue, SeqId seq);
  void remove_from(std::deque<SeqId>& queue, SeqId seq);
  int seq_cost(const Sequence& s) const;  // running slots the sequence will take (n before forking, else 1)
  // Tokens the running sequence can compute now (the uncommitted token included, where allowed), or 0.
  int num_schedulable(const Sequence& s) const;
  bool schedule_running(SeqId seq, int& budget);
  std::optional<SeqId> pick_victim(SeqId current) const;
  void schedule_tokens(SeqId seq, int num_new_tokens);  // tokens from num_computed on (the last one deferred
                                                        // when the sequence has an uncommitted sample)
  void append_token(SeqId seq, int32_t token, std::vector<SchedulerEvent>& events);
  // Deferred prefix-cache registrations (BlockTables::register_deferred) per step: step() spends
  // them first, before admitting requests, and the commit() after it what is left.
  int deferred_registrations_per_step() const;
  void preempt(SeqId seq);
  bool try_swap_in(SeqId seq, int& budget);  // the front of swapped_
  bool try_admit(SeqId seq, int& budget);     // the front of waiting_
  void build_plan(StepPlan& plan);
  void free_sequence(SeqId seq);
  void finish_sequence(SeqId seq, FinishReason reason, int32_t token, std::vector<SchedulerEvent>* events);
  std::optional<SeqId> find_sequence(RequestId id, int seq_index) const;
  Sequence& seq(SeqId id) { return seqs_.at(id); }
  const Sequence& seq(SeqId id) const { return seqs_.at(id); }

  SchedulerConfig config_;
  BlockTables tables_;
  std::unordered_map<SeqId, Sequence> seqs_;
  std::unordered_map<RequestId, Request> requests_;
  std::deque<SeqId> running_;    // sorted by (priority, order, seq_index)
  std::deque<SeqId> waiting_;    // sorted likewise: preempted sequences return near the front
  std::deque<SeqId> swapped_;    // sorted likewise
  int num_running_slots_ = 0;    // sum of seq_cost over running_
  int registrations_left_ = 0;   // of this step's deferred-registration budget
  std::vector<int32_t> free_host_blocks_;
  // The step being planned (moved to in_flight_ when step() returns).
  std::vector<Scheduled> scheduled_;
  std::vector<SchedulerEvent> step_events_;  // preempted / resumed during step(), reported by commit()
  std::shared_ptr<StepPlan> plan_;
  std::deque<InFlightStep> in_flight_;           // planned, not committed; oldest first (at most 2)
  std::vector<std::shared_ptr<StepPlan>> spare_plans_;  // committed plans, reused once the caller drops them
  uint64_t next_order_ = 0;
  SeqId next_seq_id_ = 0;
  int64_t num_preemptions_ = 0;
  int64_t num_steps_ = 0;
};

}  // namespace pagedcore
