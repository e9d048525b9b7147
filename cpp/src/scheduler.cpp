#include "pagedcore/scheduler.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace pagedcore {
namespace {

std::invalid_argument bad(const std::string& what) { return std::invalid_argument(what); }

bool contains(const std::vector<int32_t>& v, int32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

}  // namespace

Scheduler::Scheduler(const SchedulerConfig& config)
    : config_(config),
      tables_(config.num_blocks, config.block_size, config.enable_prefix_caching),
      plan_(std::make_shared<StepPlan>()) {
  if (config.max_num_seqs < 1) throw bad("max_num_seqs must be >= 1, got " + std::to_string(config.max_num_seqs));
  if (config.max_num_batched_tokens < 1) {
    throw bad("max_num_batched_tokens must be >= 1, got " + std::to_string(config.max_num_batched_tokens));
  }
  if (config.max_model_len < 1) throw bad("max_model_len must be >= 1, got " + std::to_string(config.max_model_len));
  if (config.num_host_blocks < 0) throw bad("num_host_blocks must be >= 0, got " + std::to_string(config.num_host_blocks));
  if (config.preemption_mode == PreemptionMode::kSwap && config.num_host_blocks == 0) {
    throw bad("preemption by swapping needs num_host_blocks > 0");
  }
  for (int b = config.num_host_blocks - 1; b >= 0; --b) free_host_blocks_.push_back(b);
}

// ---- admission -------------------------------------------------------------------------------

void Scheduler::add_request(RequestId id, std::span<const int32_t> prompt, const RequestParams& params) {
  if (requests_.count(id)) throw bad("request id " + std::to_string(id) + " already exists");
  if (prompt.empty()) throw bad("prompt must contain at least one token");
  for (int32_t t : prompt) {
    if (t < 0) throw bad("token ids must be >= 0, got " + std::to_string(t));
  }
  if (params.max_tokens < 1) throw bad("max_tokens must be >= 1, got " + std::to_string(params.max_tokens));
  if (params.min_tokens < 0 || params.min_tokens > params.max_tokens) {
    throw bad("min_tokens must be in [0, max_tokens=" + std::to_string(params.max_tokens) + "], got " +
              std::to_string(params.min_tokens));
  }
  if (params.n < 1 || params.n > config_.max_num_seqs) {
    throw bad("n must be in [1, max_num_seqs=" + std::to_string(config_.max_num_seqs) + "], got " +
              std::to_string(params.n));
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + params.max_tokens;
  if (total > config_.max_model_len) {
    throw bad("prompt (" + std::to_string(prompt.size()) + " tokens) + max_tokens (" +
              std::to_string(params.max_tokens) + ") = " + std::to_string(total) + " exceeds max_model_len (" +
              std::to_string(config_.max_model_len) + ")");
  }
  const int64_t capacity = static_cast<int64_t>(config_.num_blocks) * config_.block_size;
  if (total > capacity) {
    throw bad("prompt (" + std::to_string(prompt.size()) + " tokens) + max_tokens (" +
              std::to_string(params.max_tokens) + ") = " + std::to_string(total) +
              " tokens can never fit the KV cache of " + std::to_string(config_.num_blocks) + " blocks x " +
              std::to_string(config_.block_size) + " = " + std::to_string(capacity) + " tokens");
  }
  const SeqId sid = next_seq_id_++;
  Sequence s;
  s.request_id = id;
  s.seq_index = 0;
  s.tokens.reserve(total);  // prompt + max_tokens: appends never reallocate inside a commit
  s.tokens.assign(prompt.begin(), prompt.end());
  s.num_prompt_tokens = static_cast<int>(prompt.size());
  s.max_tokens = params.max_tokens;
  s.order = next_order_++;
  s.priority = params.priority;
  seqs_.emplace(sid, std::move(s));
  requests_.emplace(id, Request{params, {sid}});
  insert_sorted(waiting_, sid);
}

// ---- queues ----------------------------------------------------------------------------------

bool Scheduler::sorts_before(SeqId a, SeqId b) const {
  const Sequence& x = seq(a);
  const Sequence& y = seq(b);
  if (x.priority != y.priority) return x.priority < y.priority;
  if (x.order != y.order) return x.order < y.order;
  return x.seq_index < y.seq_index;
}

void Scheduler::insert_sorted(std::deque<SeqId>& queue, SeqId sid) {
  auto it = std::upper_bound(queue.begin(), queue.end(), sid,
                             [this](SeqId a, SeqId b) { return sorts_before(a, b); });
  queue.insert(it, sid);
}

void Scheduler::remove_from(std::deque<SeqId>& queue, SeqId sid) {
  auto it = std::find(queue.begin(), queue.end(), sid);
  if (it == queue.end()) throw std::logic_error("scheduler: sequence missing from its queue");
  queue.erase(it);
}

int Scheduler::seq_cost(const Sequence& s) const {
  return s.forked ? 1 : requests_.at(s.request_id).params.n;
}

// ---- step ------------------------------------------------------------------------------------

std::shared_ptr<const StepPlan> Scheduler::step() {
  if (in_flight_.size() >= 2) {
    throw std::logic_error("step() called with two uncommitted steps: commit() the older one first");
  }
  // A plan the caller no longer holds is reused; the in-flight ones stay untouched.
  plan_.reset();
  for (auto& spare : spare_plans_) {
    if (spare.use_count() == 1) {
      plan_ = spare;
      break;
    }
  }
  if (!plan_) {
    plan_ = std::make_shared<StepPlan>();
    if (spare_plans_.size() < 4) spare_plans_.push_back(plan_);
  }
  plan_->clear();
  scheduled_.clear();
  step_events_.clear();
  int budget = config_.max_num_batched_tokens;
  const int64_t preemptions_before = num_preemptions_;

  // Running sequences: decodes first, then prefill chunks of partially prefilled ones. Iterate a
  // snapshot because preemption removes sequences from running_.
  const std::vector<SeqId> snapshot(running_.begin(), running_.end());
  for (int pass = 0; pass < 2 && budget > 0; ++pass) {
    for (SeqId sid : snapshot) {
      if (budget == 0) break;
      auto it = seqs_.find(sid);
      if (it == seqs_.end() || it->second.status != Status::kRunning) continue;
      Sequence& s = it->second;
      if (s.scheduled_in_step == num_steps_) continue;
      const int num_new = num_schedulable(s);
      if (num_new == 0 || (num_new == 1) != (pass == 0)) continue;
      schedule_running(sid, budget);
    }
  }

  // Deferred prefix-cache registrations: this step's share of the budget goes first to blocks the
  // running rows just filled (the synchronous loop's decode rows), so that a request admitted below
  // still finds a small batch's blocks in the step that fills them; commit() spends the rest.
  registrations_left_ = deferred_registrations_per_step();
  registrations_left_ -= tables_.register_deferred(registrations_left_);

  // Sequences come back (swapped in) or in (admitted) only in steps that preempted nothing,
  // so one step never both evicts and admits.
  if (num_preemptions_ == preemptions_before) {
    while (!swapped_.empty() && budget > 0 && num_preemptions_ == preemptions_before) {
      if (!try_swap_in(swapped_.front(), budget)) break;
    }
    // FCFS within a priority: if the head cannot be admitted, nothing behind it is (no starvation).
    while (swapped_.empty() && !waiting_.empty() && budget > 0) {
      if (!try_admit(waiting_.front(), budget)) break;
    }
  }
  build_plan(*plan_);
  ++num_steps_;
  in_flight_.push_back({plan_, std::move(scheduled_), std::move(step_events_)});
  scheduled_.clear();
  step_events_.clear();
  return plan_;
}

int Scheduler::num_schedulable(const Sequence& s) const {
  const int known = static_cast<int>(s.tokens.size()) - s.num_computed;
  if (s.num_uncommitted_samples == 0) return std::max(known, 0);
  // Sampled by the uncommitted step: its next row takes that token on the device, if one sample
  // (not an n > 1 prompt, which forks at commit) and the token cannot end the sequence by length
  // (then commit() finishes it anyway).
  const int length_after = static_cast<int>(s.tokens.size()) + 1;
  if (s.num_uncommitted_samples != 1 || length_after - s.num_prompt_tokens >= s.max_tokens ||
      length_after >= config_.max_model_len) {
    return 0;
  }
  return 1;
}

bool Scheduler::schedule_running(SeqId sid, int& budget) {
  Sequence& s = seq(sid);
  const int num_new = std::min(num_schedulable(s), budget);
  if (num_new <= 0) return false;
  while (!tables_.can_append(sid, num_new)) {
    std::optional<SeqId> victim = pick_victim(sid);
    if (!victim) {
      preempt(sid);
      return false;
    }
    preempt(*victim);
  }
  schedule_tokens(sid, num_new);
  budget -= num_new;
  return true;
}

void Scheduler::schedule_tokens(SeqId sid, int num_new) {
  Sequence& s = seq(sid);
  std::vector<BlockCopy> copies;
  const bool deferred = s.num_uncommitted_samples > 0;
  // Blocks filled by generated tokens enter the prefix cache a few steps later (BlockTables'
  // Registration: commit() registers a bounded number per step); prompt blocks at once.
  const Registration when = s.num_computed >= s.num_prompt_tokens ? Registration::kDeferred : Registration::kNow;
  const bool appended = deferred ? tables_.append_pending(sid, copies)
                                 : tables_.append(sid, std::span<const int32_t>(s.tokens.data() + s.num_computed, num_new),
                                                  copies, when);
  if (!appended) throw std::logic_error("scheduler: append failed after can_append");
  s.table_has_pending = deferred;
  for (const BlockCopy& c : copies) {
    plan_->copy_pairs.push_back(c.src);
    plan_->copy_pairs.push_back(c.dst);
  }
  const int first = s.num_computed;
  s.num_computed += num_new;
  const bool completes = deferred || s.num_computed == static_cast<int>(s.tokens.size());
  const int num_samples = completes ? seq_cost(s) : 0;
  s.num_uncommitted_samples += num_samples;
  s.scheduled_in_step = num_steps_;
  scheduled_.push_back({sid, first, num_new, num_samples, deferred});
}

std::optional<SeqId> Scheduler::pick_victim(SeqId current) const {
  // The lowest-priority, latest-arrived running sequence not yet scheduled this step; if that
  // one would run before `current`, `current` itself is the one to go.
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    if (*it == current) continue;
    const Sequence& s = seq(*it);
    if (s.scheduled_in_step == num_steps_) continue;
    if (s.num_uncommitted_samples > 1) continue;  // an n > 1 prompt forks at its commit: keep its table
    if (sorts_before(*it, current)) return std::nullopt;
    return *it;
  }
  return std::nullopt;
}

void Scheduler::preempt(SeqId sid) {
  Sequence& s = seq(sid);
  ++s.num_preemptions;
  ++num_preemptions_;
  remove_from(running_, sid);
  num_running_slots_ -= seq_cost(s);
  const std::vector<BlockId>& blocks = tables_.blocks(sid);
  if (config_.preemption_mode == PreemptionMode::kSwap && blocks.size() <= free_host_blocks_.size()) {
    for (BlockId b : blocks) {
      const int32_t host = free_host_blocks_.back();
      free_host_blocks_.pop_back();
      plan_->swap_out_pairs.push_back(b);
      plan_->swap_out_pairs.push_back(host);
      s.host_blocks.push_back(host);
    }
    tables_.free(sid);
    s.status = Status::kSwapped;
    insert_sorted(swapped_, sid);
  } else {
    tables_.free(sid);
    s.num_computed = 0;  // recompute: prompt and generated tokens are prefilled again
    s.status = Status::kWaiting;
    insert_sorted(waiting_, sid);
  }
  step_events_.push_back({EventKind::kPreempted, s.request_id, s.seq_index});
}

bool Scheduler::try_swap_in(SeqId sid, int& budget) {
  Sequence& s = seq(sid);
  if (num_running_slots_ + seq_cost(s) > config_.max_num_seqs) return false;
  // Room for the swapped blocks and for this step's tokens, so it does not bounce straight back out.
  const int bs = config_.block_size;
  const int num_new = std::min(static_cast<int>(s.tokens.size()) - s.num_computed, budget);
  const int need = (s.num_computed + num_new + bs - 1) / bs;
  if (need > tables_.pool().num_free_blocks()) return false;
  tables_.add_sequence(sid, requests_.at(s.request_id).params.cache_salt, static_cast<int>(s.tokens.capacity()));
  std::vector<BlockCopy> unused;
  tables_.append(sid, std::span<const int32_t>(s.tokens.data(), s.num_computed), unused);
  const std::vector<BlockId>& blocks = tables_.blocks(sid);
  for (size_t i = 0; i < s.host_blocks.size(); ++i) {
    plan_->swap_in_pairs.push_back(s.host_blocks[i]);
    plan_->swap_in_pairs.push_back(blocks[i]);
    free_host_blocks_.push_back(s.host_blocks[i]);
  }
  s.host_blocks.clear();
  s.status = Status::kRunning;
  swapped_.pop_front();
  insert_sorted(running_, sid);
  num_running_slots_ += seq_cost(s);
  step_events_.push_back({EventKind::kResumed, s.request_id, s.seq_index});
  schedule_tokens(sid, num_new);
  budget -= num_new;
  return true;
}

bool Scheduler::try_admit(SeqId sid, int& budget) {
  Sequence& s = seq(sid);
  if (num_running_slots_ + seq_cost(s) > config_.max_num_seqs) return false;
  tables_.add_sequence(sid, requests_.at(s.request_id).params.cache_salt, static_cast<int>(s.tokens.capacity()));
  const int cached = tables_.match_prefix(sid, s.tokens, /*record_stats=*/false);
  const int num_new = std::min(static_cast<int>(s.tokens.size()) - cached, budget);
  if (!tables_.can_append(sid, num_new)) {
    tables_.free(sid);
    return false;
  }
  tables_.record_prefix_query(static_cast<int>(s.tokens.size()), cached);
  s.num_computed = cached;
  if (s.num_cached_tokens < 0) s.num_cached_tokens = cached;
  if (s.num_preemptions > 0) step_events_.push_back({EventKind::kResumed, s.request_id, s.seq_index});
  waiting_.pop_front();
  s.status = Status::kRunning;
  insert_sorted(running_, sid);
  num_running_slots_ += seq_cost(s);
  schedule_tokens(sid, num_new);
  budget -= num_new;
  return true;
}

void Scheduler::build_plan(StepPlan& plan) {
  // Single-token rows first, so kernels see the decode rows as one contiguous group.
  std::stable_partition(scheduled_.begin(), scheduled_.end(), [](const Scheduled& x) { return x.num_new_tokens == 1; });
  const int bs = config_.block_size;
  plan.num_seqs = static_cast<int>(scheduled_.size());
  int max_blocks = 0;
  for (const Scheduled& x : scheduled_) {
    max_blocks = std::max(max_blocks, static_cast<int>(tables_.blocks(x.seq).size()));
    if (x.num_new_tokens == 1) ++plan.num_decode_seqs;  // partitioned: these lead
  }
  plan.max_blocks_per_seq = max_blocks;
  // The table widens by one block every block_size decode steps: grow its room geometrically, so
  // that such a step does not reallocate (and page-fault) a fresh buffer of the whole table.
  const size_t table_size = static_cast<size_t>(plan.num_seqs) * max_blocks;
  if (table_size > plan.block_tables.capacity()) plan.block_tables.reserve(std::max(table_size, 2 * plan.block_tables.capacity()));
  plan.block_tables.assign(table_size, kNullBlock);
  plan.query_start_loc.push_back(0);
  int row = 0;
  for (int i = 0; i < plan.num_seqs; ++i) {
    const Scheduled& x = scheduled_[i];
    Sequence& s = seq(x.seq);
    const std::vector<BlockId>& blocks = tables_.blocks(x.seq);
    std::copy(blocks.begin(), blocks.end(), plan.block_tables.begin() + static_cast<size_t>(i) * max_blocks);
    if (x.deferred_input) {
      plan.deferred_input_rows.push_back(row);
      plan.deferred_input_samples.push_back(s.last_sample_row);
    }
    for (int p = x.first_position; p < x.first_position + x.num_new_tokens; ++p) {
      plan.input_ids.push_back(x.deferred_input ? 0 : s.tokens[p]);
      plan.positions.push_back(p);
      plan.slot_mapping.push_back(blocks[p / bs] * bs + p % bs);
    }
    row += x.num_new_tokens;
    plan.context_lens.push_back(x.first_position + x.num_new_tokens);
    plan.query_start_loc.push_back(row);
    plan.seq_request_ids.push_back(s.request_id);
    if (x.num_samples > 0) s.last_sample_row = plan.num_samples();
    for (int k = 0; k < x.num_samples; ++k) {
      plan.logits_indices.push_back(row - 1);
      plan.sample_request_ids.push_back(s.request_id);
      plan.sample_seq_indices.push_back(x.num_samples > 1 ? k : s.seq_index);
    }
  }
  plan.num_tokens = row;
}

// ---- commit ----------------------------------------------------------------------------------

std::vector<SchedulerEvent> Scheduler::commit(std::span<const int32_t> sampled) {
  if (in_flight_.empty()) throw std::logic_error("commit() called without a step() to commit");
  InFlightStep& step = in_flight_.front();
  if (static_cast<int>(sampled.size()) != step.plan->num_samples()) {
    throw bad("commit() needs one sampled token per plan sample row: expected " +
              std::to_string(step.plan->num_samples()) + ", got " + std::to_string(sampled.size()));
  }
  for (int32_t t : sampled) {
    if (t < 0) throw bad("sampled token ids must be >= 0, got " + std::to_string(t));
  }
  std::vector<SchedulerEvent> events = std::move(step.events);
  const std::vector<Scheduled> scheduled = std::move(step.scheduled);
  in_flight_.pop_front();
  size_t row = 0;
  for (const Scheduled& x : scheduled) {
    const size_t first = row;
    row += x.num_samples;
    auto it = seqs_.find(x.seq);
    if (it == seqs_.end()) continue;  // finished or aborted after step()
    Sequence& s = it->second;
    if (x.num_samples == 0) continue;
    s.num_uncommitted_samples -= x.num_samples;
    if (x.num_samples > 1) {
      // The prompt of an n > 1 request is done: fork n - 1 children sharing every block. A sequence
      // with an uncommitted fork is never preempted (pick_victim), so its table is there.
      s.forked = true;
      Request& req = requests_.at(s.request_id);
      for (int k = 1; k < x.num_samples; ++k) {
        const SeqId child = next_seq_id_++;
        tables_.fork(x.seq, child);
        Sequence c = s;
        c.tokens.reserve(s.tokens.capacity());  // a copy holds only the size: keep the room
        c.seq_index = k;
        seqs_.emplace(child, std::move(c));
        req.seqs.push_back(child);
        insert_sorted(running_, child);
        append_token(child, sampled[first + k], events);
      }
    }
    append_token(x.seq, sampled[first], events);
  }
  registrations_left_ -= tables_.register_deferred(registrations_left_);  // what step() left of its budget
  return events;
}

int Scheduler::deferred_registrations_per_step() const {
  // Per step (shared by step() and the commit after it): 1.5 times the average rate (every running
  // sequence fills a block each block_size steps) plus a floor: a lockstep batch's burst (a block of
  // every sequence) drains within 2/3 of a block's steps, each of them taking a small share
  // (bench/RESULTS.md, Scheduler: the p99 tail).
  const int bs = config_.block_size;
  const int rate = (static_cast<int>(running_.size()) + bs - 1) / bs;
  return 8 + rate + rate / 2;
}

void Scheduler::append_token(SeqId sid, int32_t token, std::vector<SchedulerEvent>& events) {
  Sequence& s = seq(sid);
  const RequestParams& p = requests_.at(s.request_id).params;
  s.tokens.push_back(token);
  // Scheduled again before this token was known (overlapped loop): its slot is reserved, now hashable.
  if (s.table_has_pending) {
    tables_.resolve_pending(sid, token);
    s.table_has_pending = false;
  }
  const int generated = static_cast<int>(s.tokens.size()) - s.num_prompt_tokens;
  FinishReason reason = FinishReason::kNone;
  if (generated >= p.min_tokens &&
      (contains(p.stop_token_ids, token) || (!p.ignore_eos && contains(p.eos_token_ids, token)))) {
    reason = FinishReason::kStop;
  } else if (generated >= p.max_tokens || static_cast<int>(s.tokens.size()) >= config_.max_model_len) {
    reason = FinishReason::kLength;
  }
  if (reason != FinishReason::kNone) {
    finish_sequence(sid, reason, token, &events);
  } else {
    events.push_back({EventKind::kToken, s.request_id, s.seq_index, token, FinishReason::kNone,
                      std::max(s.num_cached_tokens, 0)});
  }
}

// ---- finishing -------------------------------------------------------------------------------

std::optional<SeqId> Scheduler::find_sequence(RequestId id, int seq_index) const {
  auto it = requests_.find(id);
  if (it == requests_.end()) return std::nullopt;
  for (SeqId sid : it->second.seqs) {
    if (seq(sid).seq_index == seq_index) return sid;
  }
  return std::nullopt;
}

void Scheduler::finish(RequestId id, int seq_index, FinishReason reason) {
  std::optional<SeqId> sid = find_sequence(id, seq_index);
  if (!sid) {
    throw bad("no unfinished sequence " + std::to_string(seq_index) + " of request " + std::to_string(id));
  }
  finish_sequence(*sid, reason, -1, nullptr);
}

void Scheduler::abort(RequestId id) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  const std::vector<SeqId> seqs = it->second.seqs;
  for (SeqId sid : seqs) finish_sequence(sid, FinishReason::kAbort, -1, nullptr);
}

void Scheduler::finish_sequence(SeqId sid, FinishReason reason, int32_t token, std::vector<SchedulerEvent>* events) {
  const Sequence& s = seq(sid);
  if (events) {
    events->push_back({EventKind::kFinished, s.request_id, s.seq_index, token, reason,
                       std::max(s.num_cached_tokens, 0)});
  }
  free_sequence(sid);
}

void Scheduler::free_sequence(SeqId sid) {
  Sequence& s = seq(sid);
  switch (s.status) {
    case Status::kRunning:
      remove_from(running_, sid);
      num_running_slots_ -= seq_cost(s);
      break;
    case Status::kWaiting:
      remove_from(waiting_, sid);
      break;
    case Status::kSwapped:
      remove_from(swapped_, sid);
      break;
  }
  if (tables_.has_sequence(sid)) tables_.free(sid);
  for (int32_t h : s.host_blocks) free_host_blocks_.push_back(h);
  Request& req = requests_.at(s.request_id);
  req.seqs.erase(std::find(req.seqs.begin(), req.seqs.end(), sid));
  if (req.seqs.empty()) requests_.erase(s.request_id);
  seqs_.erase(sid);
}

// ---- introspection ---------------------------------------------------------------------------

SchedulerStats Scheduler::stats() const {
  SchedulerStats st;
  st.num_running = static_cast<int>(running_.size());
  st.num_waiting = static_cast<int>(waiting_.size());
  st.num_swapped = static_cast<int>(swapped_.size());
  const PoolStats pool = tables_.stats();
  st.num_used_blocks = pool.num_used_blocks;
  st.num_blocks = pool.num_blocks;
  st.kv_usage = static_cast<double>(pool.num_used_blocks) / pool.num_blocks;
  st.num_prefix_hit_tokens = pool.num_prefix_hit_tokens;
  st.num_prefix_query_tokens = pool.num_prefix_query_tokens;
  st.prefix_hit_rate = pool.num_prefix_query_tokens == 0
                           ? 0.0 : static_cast<double>(pool.num_prefix_hit_tokens) / pool.num_prefix_query_tokens;
  st.num_preemptions = num_preemptions_;
  st.num_steps = num_steps_;
  return st;
}

void Scheduler::check_invariants() const {
  tables_.check_invariants();
  auto fail = [](const std::string& what) { throw std::logic_error("scheduler invariant: " + what); };
  size_t in_queues = running_.size() + waiting_.size() + swapped_.size();
  if (in_queues != seqs_.size()) fail("queues hold " + std::to_string(in_queues) + " of " + std::to_string(seqs_.size()) + " sequences");
  int slots = 0;
  for (SeqId sid : running_) {
    const Sequence& s = seq(sid);
    if (s.status != Status::kRunning) fail("non-running sequence in running queue");
    if (!tables_.has_sequence(sid)) fail("running sequence without a block table");
    if (tables_.num_tokens(sid) != s.num_computed) fail("block table size differs from computed tokens");
    if (tables_.has_pending(sid) != s.table_has_pending) fail("pending-slot flag differs from the block table's");
    slots += seq_cost(s);
  }
  if (slots != num_running_slots_) fail("running slot count drifted");
  if (num_running_slots_ > config_.max_num_seqs) fail("more running sequences than max_num_seqs");
  size_t host_held = 0;
  for (SeqId sid : waiting_) {
    const Sequence& s = seq(sid);
    if (s.status != Status::kWaiting || tables_.has_sequence(sid)) fail("waiting sequence holds blocks");
  }
  for (SeqId sid : swapped_) {
    const Sequence& s = seq(sid);
    if (s.status != Status::kSwapped || tables_.has_sequence(sid)) fail("swapped sequence holds device blocks");
    const size_t want = (s.num_computed + config_.block_size - 1) / config_.block_size;
    if (s.host_blocks.size() != want) fail("swapped sequence holds the wrong number of host blocks");
    host_held += s.host_blocks.size();
  }
  if (host_held + free_host_blocks_.size() != static_cast<size_t>(config_.num_host_blocks)) fail("host blocks leaked");
  size_t num_seqs = 0;
  for (const auto& [rid, req] : requests_) {
    if (req.seqs.empty()) fail("request without sequences");
    for (SeqId sid : req.seqs) {
      if (!seqs_.count(sid) || seq(sid).request_id != rid) fail("request lists a foreign sequence");
      // Forked exactly when an n > 1 prompt has been split into its n sequences (its first tokens).
      const Sequence& s = seq(sid);
      const bool has_output = static_cast<int>(s.tokens.size()) > s.num_prompt_tokens;
      if (s.forked != (req.params.n > 1 && has_output)) {
        fail(std::string("sequence ") + (s.forked ? "marked forked" : "not marked forked") + " with n = " +
             std::to_string(req.params.n) + " and " + (has_output ? "" : "no ") + "generated tokens");
      }
    }
    num_seqs += req.seqs.size();
  }
  if (num_seqs != seqs_.size()) fail("sequences not owned by exactly one request");
}

}  // namespace pagedcore
