// Scheduler scenarios: budgets, decode-first ordering, chunked prefill, prefix reuse, preemption
// order and resumption, swapping, abort, admission errors, n > 1 sharing; plus a randomized
// simulation that forces preemption and checks invariants after every step.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>

#include "pagedcore/scheduler.h"

namespace pagedcore {
namespace {

std::vector<int32_t> prompt_of(int n, int start = 1) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

SchedulerConfig small_config(int num_blocks = 16, int block_size = 4) {
  SchedulerConfig c;
  c.num_blocks = num_blocks;
  c.block_size = block_size;
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = 64;
  c.max_model_len = 256;
  return c;
}

RequestParams params(int max_tokens, int n = 1) {
  RequestParams p;
  p.max_tokens = max_tokens;
  p.n = n;
  return p;
}

std::vector<int32_t> vec(const std::vector<int32_t>& v) { return v; }

// Runs step + commit, sampling token 1000 + row for every sample row.
std::vector<SchedulerEvent> run_step(Scheduler& s, std::shared_ptr<const StepPlan>* plan_out = nullptr) {
  auto plan = s.step();
  std::vector<int32_t> sampled(plan->num_samples());
  for (int i = 0; i < plan->num_samples(); ++i) sampled[i] = 1000 + i;
  if (plan_out) *plan_out = plan;
  auto events = s.commit(sampled);
  s.check_invariants();
  return events;
}

TEST(Scheduler, PrefillThenDecodePlanArrays) {
  Scheduler s(small_config());
  s.add_request(7, prompt_of(6), params(3));
  auto plan = s.step();
  EXPECT_EQ(plan->num_seqs, 1);
  EXPECT_EQ(plan->num_tokens, 6);
  EXPECT_EQ(plan->num_decode_seqs, 0);
  EXPECT_EQ(plan->input_ids, prompt_of(6));
  EXPECT_EQ(plan->positions, (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(plan->slot_mapping, (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));  // blocks 0, 1
  EXPECT_EQ(plan->max_blocks_per_seq, 2);
  EXPECT_EQ(plan->block_tables, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(plan->context_lens, (std::vector<int32_t>{6}));
  EXPECT_EQ(plan->query_start_loc, (std::vector<int32_t>{0, 6}));
  EXPECT_EQ(plan->logits_indices, (std::vector<int32_t>{5}));
  EXPECT_EQ(plan->sample_request_ids, (std::vector<int64_t>{7}));
  auto events = s.commit(std::vector<int32_t>{42});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, EventKind::kToken);
  EXPECT_EQ(events[0].token, 42);

  plan = s.step();
  EXPECT_EQ(plan->num_tokens, 1);
  EXPECT_EQ(plan->num_decode_seqs, 1);
  EXPECT_EQ(plan->input_ids, (std::vector<int32_t>{42}));
  EXPECT_EQ(plan->positions, (std::vector<int32_t>{6}));
  EXPECT_EQ(plan->slot_mapping, (std::vector<int32_t>{6}));
  EXPECT_EQ(plan->context_lens, (std::vector<int32_t>{7}));
  EXPECT_EQ(plan->seq_request_ids, (std::vector<int64_t>{7}));
  s.commit(std::vector<int32_t>{43});
  plan = s.step();
  events = s.commit(std::vector<int32_t>{44});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, EventKind::kFinished);
  EXPECT_EQ(events[0].finish_reason, FinishReason::kLength);
  EXPECT_EQ(events[0].token, 44);
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_EQ(s.stats().num_used_blocks, 0);
  s.check_invariants();
}

TEST(Scheduler, DecodesComeFirstAndLongPromptsAreChunked) {
  SchedulerConfig c = small_config(64);
  c.max_num_batched_tokens = 10;
  Scheduler s(c);
  s.add_request(1, prompt_of(4), params(10));
  run_step(s);  // prefill of request 1 (4 tokens)
  s.add_request(2, prompt_of(25, 100), params(4));
  std::shared_ptr<const StepPlan> plan;
  run_step(s, &plan);
  // Decode of 1 first (1 token), then a 9-token chunk of 2.
  EXPECT_EQ(plan->num_seqs, 2);
  EXPECT_EQ(plan->num_decode_seqs, 1);
  EXPECT_EQ(plan->query_start_loc, (std::vector<int32_t>{0, 1, 10}));
  EXPECT_EQ(plan->sample_request_ids, (std::vector<int64_t>{1}));  // no logits for an unfinished chunk
  run_step(s, &plan);
  EXPECT_EQ(plan->query_start_loc, (std::vector<int32_t>{0, 1, 10}));
  EXPECT_EQ(plan->positions[1], 9);
  run_step(s, &plan);  // last chunk: 7 tokens, sampled
  EXPECT_EQ(plan->query_start_loc, (std::vector<int32_t>{0, 1, 8}));
  EXPECT_EQ(plan->context_lens, (std::vector<int32_t>{7, 25}));
  EXPECT_EQ(plan->logits_indices, (std::vector<int32_t>{0, 7}));
}

TEST(Scheduler, BudgetsAndMaxNumSeqsAreRespected) {
  SchedulerConfig c = small_config(256);
  c.max_num_seqs = 3;
  c.max_num_batched_tokens = 16;
  Scheduler s(c);
  for (int r = 0; r < 6; ++r) s.add_request(r, prompt_of(5, 10 * r + 1), params(4));
  for (int i = 0; i < 40 && s.has_unfinished(); ++i) {
    std::shared_ptr<const StepPlan> plan;
    run_step(s, &plan);
    EXPECT_LE(plan->num_tokens, 16);
    EXPECT_LE(plan->num_seqs, 3);
    EXPECT_LE(s.stats().num_running, 3);
  }
  EXPECT_FALSE(s.has_unfinished());
}

TEST(Scheduler, PrefixCacheHitsAreSkipped) {
  Scheduler s(small_config(64));
  const auto system = prompt_of(12);
  auto a = system, b = system;
  a.push_back(500);
  b.push_back(600);
  s.add_request(1, a, params(1));
  run_step(s);
  s.add_request(2, b, params(2));
  std::shared_ptr<const StepPlan> plan;
  auto events = run_step(s, &plan);
  EXPECT_EQ(plan->num_tokens, 1);  // 12 cached tokens skipped, only the last prompt token computed
  EXPECT_EQ(plan->positions, (std::vector<int32_t>{12}));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, EventKind::kToken);
  EXPECT_EQ(events[0].num_cached_tokens, 12);  // token events carry it, not only the finish
  EXPECT_GT(s.stats().prefix_hit_rate, 0.4);
}

TEST(Scheduler, PreemptsLatestArrivalAndResumesAtTheRightPosition) {
  // 5 blocks of 4 tokens: two sequences needing 11 KV slots (3 blocks) each cannot both fit.
  SchedulerConfig c = small_config(5);
  c.enable_prefix_caching = false;
  Scheduler s(c);
  s.add_request(1, prompt_of(4), params(8));
  s.add_request(2, prompt_of(4, 50), params(8));
  std::map<int64_t, std::vector<int32_t>> outputs;
  bool saw_preempt = false, saw_resume = false;
  int step = 0;
  while (s.has_unfinished() && step++ < 100) {
    auto plan = s.step();
    std::vector<int32_t> sampled;
    for (int i = 0; i < plan->num_samples(); ++i) {
      // Token = position it will occupy, so a resumed sequence must continue the same numbering.
      sampled.push_back(plan->positions[plan->logits_indices[i]] + 1 + 100 * static_cast<int>(plan->sample_request_ids[i]));
    }
    for (const auto& e : s.commit(sampled)) {
      if (e.kind == EventKind::kPreempted) {
        saw_preempt = true;
        EXPECT_EQ(e.request_id, 2);  // latest arrival goes first
      }
      if (e.kind == EventKind::kResumed) saw_resume = true;
      if (e.kind == EventKind::kToken || e.kind == EventKind::kFinished) outputs[e.request_id].push_back(e.token);
    }
    s.check_invariants();
  }
  EXPECT_TRUE(saw_preempt);
  EXPECT_TRUE(saw_resume);
  for (int64_t r : {1, 2}) {
    ASSERT_EQ(outputs[r].size(), 8u);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(outputs[r][i], 4 + i + 100 * r) << "request " << r << " token " << i;
  }
  EXPECT_EQ(s.stats().num_used_blocks, 0);
}

TEST(Scheduler, LowerPriorityIsPreemptedFirst) {
  SchedulerConfig c = small_config(5);
  c.enable_prefix_caching = false;
  Scheduler s(c);
  RequestParams low = params(8), high = params(8);
  low.priority = 5;
  high.priority = 0;
  s.add_request(1, prompt_of(4), low);    // arrives first but has lower priority
  s.add_request(2, prompt_of(4, 50), high);
  bool saw = false;
  for (int i = 0; i < 100 && s.has_unfinished(); ++i) {
    for (const auto& e : run_step(s)) {
      if (e.kind == EventKind::kPreempted) {
        EXPECT_EQ(e.request_id, 1);
        saw = true;
      }
    }
  }
  EXPECT_TRUE(saw);
}

TEST(Scheduler, SwapPreemptionEmitsBlockListsAndKeepsProgress) {
  SchedulerConfig c = small_config(5);
  c.enable_prefix_caching = false;
  c.preemption_mode = PreemptionMode::kSwap;
  c.num_host_blocks = 8;
  Scheduler s(c);
  s.add_request(1, prompt_of(4), params(8));
  s.add_request(2, prompt_of(4, 50), params(8));
  int swap_outs = 0, swap_ins = 0, tokens = 0;
  for (int i = 0; i < 100 && s.has_unfinished(); ++i) {
    auto plan = s.step();
    swap_outs += static_cast<int>(plan->swap_out_pairs.size() / 2);
    swap_ins += static_cast<int>(plan->swap_in_pairs.size() / 2);
    if (!plan->swap_out_pairs.empty()) EXPECT_GT(s.stats().num_swapped, 0);
    std::vector<int32_t> sampled(plan->num_samples(), 9);
    for (const auto& e : s.commit(sampled)) tokens += e.kind == EventKind::kToken || e.kind == EventKind::kFinished;
    s.check_invariants();
  }
  EXPECT_GT(swap_outs, 0);
  EXPECT_EQ(swap_outs, swap_ins);
  EXPECT_EQ(tokens, 16);
  EXPECT_EQ(s.num_free_host_blocks(), 8);
}

TEST(Scheduler, AbortFreesEverythingAtOnce) {
  Scheduler s(small_config(32));
  s.add_request(1, prompt_of(10), params(20, 3));
  s.add_request(2, prompt_of(10, 40), params(20));
  run_step(s);
  run_step(s);
  EXPECT_GT(s.stats().num_used_blocks, 0);
  s.abort(1);
  s.check_invariants();
  auto plan = s.step();
  s.abort(2);  // between step and commit: commit skips it
  s.commit(std::vector<int32_t>(plan->num_samples(), 5));
  s.check_invariants();
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_EQ(s.stats().num_used_blocks, 0);
  s.abort(12345);  // unknown ids are ignored
}

TEST(Scheduler, AdmissionErrorsNameTheLimits) {
  SchedulerConfig c = small_config(4);  // 16 tokens of KV
  c.max_model_len = 20;
  Scheduler s(c);
  auto expect_error = [&](const std::vector<int32_t>& prompt, RequestParams p, const std::string& fragment) {
    try {
      s.add_request(99, prompt, p);
      FAIL() << "accepted: " << fragment;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect_error(prompt_of(15), params(6), "prompt (15 tokens) + max_tokens (6) = 21 exceeds max_model_len (20)");
  expect_error(prompt_of(12), params(6), "can never fit the KV cache of 4 blocks x 4 = 16 tokens");
  expect_error({}, params(1), "at least one token");
  expect_error(prompt_of(2), params(0), "max_tokens must be >= 1");
  expect_error(prompt_of(2), params(1, 0), "n must be in [1, max_num_seqs=8]");
  RequestParams p = params(2);
  p.min_tokens = 3;
  expect_error(prompt_of(2), p, "min_tokens must be in [0, max_tokens=2]");
  s.add_request(1, prompt_of(2), params(2));
  try {
    s.add_request(1, prompt_of(2), params(2));
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("already exists"), std::string::npos);
  }
  SchedulerConfig bad = small_config();
  bad.block_size = 5;
  EXPECT_THROW(Scheduler{bad}, std::invalid_argument);
  EXPECT_THROW(s.commit(std::vector<int32_t>{}), std::logic_error);
}

TEST(Scheduler, EosStopTokensAndMinTokens) {
  Scheduler s(small_config(32));
  RequestParams p = params(10);
  p.eos_token_ids = {1000};
  p.min_tokens = 2;
  s.add_request(1, prompt_of(3), p);
  auto events = run_step(s);  // samples 1000 (EOS) but min_tokens = 2 keeps it going
  EXPECT_EQ(events[0].kind, EventKind::kToken);
  events = run_step(s);
  EXPECT_EQ(events[0].kind, EventKind::kFinished);
  EXPECT_EQ(events[0].finish_reason, FinishReason::kStop);

  RequestParams q = params(3);
  q.eos_token_ids = {1000};
  q.ignore_eos = true;
  s.add_request(2, prompt_of(3), q);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(run_step(s)[0].kind, EventKind::kToken);
  events = run_step(s);
  EXPECT_EQ(events[0].finish_reason, FinishReason::kLength);

  RequestParams r = params(5);
  r.stop_token_ids = {1000};
  r.ignore_eos = true;  // stop tokens apply even with ignore_eos
  s.add_request(3, prompt_of(3), r);
  EXPECT_EQ(run_step(s)[0].finish_reason, FinishReason::kStop);

  s.add_request(4, prompt_of(3), params(5));
  run_step(s);
  s.finish(4, 0);  // Python's stop strings
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_THROW(s.finish(4, 0), std::invalid_argument);
}

TEST(Scheduler, ParallelSamplingForksAndSharesThePrompt) {
  Scheduler s(small_config(32));
  s.add_request(1, prompt_of(6), params(3, 3));  // 6 tokens: block 0 full, block 1 half
  std::shared_ptr<const StepPlan> plan;
  auto events = run_step(s, &plan);
  EXPECT_EQ(plan->logits_indices, (std::vector<int32_t>{5, 5, 5}));
  EXPECT_EQ(plan->sample_seq_indices, (std::vector<int32_t>{0, 1, 2}));
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(s.stats().num_running, 3);
  EXPECT_EQ(s.block_tables().pool().ref_count(0), 3);
  EXPECT_EQ(s.block_tables().pool().ref_count(1), 3);
  EXPECT_EQ(s.stats().num_used_blocks, 2);
  run_step(s, &plan);
  // Each child writes into the shared half block: two copy-on-write copies, the last writer keeps it.
  EXPECT_EQ(plan->copy_pairs.size(), 4u);
  EXPECT_EQ(plan->num_decode_seqs, 3);
  EXPECT_EQ(s.block_tables().pool().ref_count(0), 3);
  run_step(s);
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_EQ(s.stats().num_used_blocks, 0);
}

// check_invariants() requires `forked` to be set exactly when an n > 1 prompt has been split into
// its n sequences: never for n == 1, not during the chunked prefill of an n > 1 prompt.
TEST(Scheduler, OnlyAnNGreaterThanOnePromptIsForked) {
  SchedulerConfig c = small_config(32);
  c.max_num_seqs = 4;
  c.max_num_batched_tokens = 4;
  Scheduler s(c);
  s.add_request(1, prompt_of(3), params(2));        // n == 1: never forked
  s.add_request(2, prompt_of(6, 50), params(2, 3));  // n == 3: prefilled in three chunks, then forked
  s.check_invariants();
  auto events = run_step(s);  // request 1's prompt and 1 token of request 2's
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].request_id, 1);
  EXPECT_EQ(s.stats().num_running, 2);  // request 2 still one unforked sequence, holding 3 slots
  events = run_step(s);  // request 1's last token, 3 more prompt tokens of request 2
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, EventKind::kFinished);
  events = run_step(s);  // request 2's last 2 prompt tokens: forked into 3 sequences
  ASSERT_EQ(events.size(), 3u);
  for (int k = 0; k < 3; ++k) EXPECT_EQ(events[k].request_id, 2);
  EXPECT_EQ(s.stats().num_running, 3);
  events = run_step(s);
  EXPECT_EQ(events.size(), 3u);
  EXPECT_FALSE(s.has_unfinished());
}

TEST(Scheduler, ThirdStepWithoutCommitIsRefused) {
  Scheduler s(small_config());
  s.add_request(1, prompt_of(3), params(4));
  s.step();
  s.step();  // the overlapped loop plans one step ahead of its commits
  EXPECT_EQ(s.num_uncommitted_steps(), 2);
  EXPECT_THROW(s.step(), std::logic_error);
  EXPECT_FALSE(s.reset_prefix_cache());
}

// A batch decoding in lockstep fills a block in every sequence at the same step. Those blocks enter
// the prefix cache over that commit and the next ones (a bounded number per commit, which keeps
// the burst out of any one step), and every generated full block is findable in the end.
TEST(Scheduler, GeneratedBlocksOfALockstepBatchAreRegisteredOverTheNextCommits) {
  SchedulerConfig c = small_config(512, 4);
  const int n = 64;
  c.max_num_seqs = n;
  c.max_num_batched_tokens = 512;
  Scheduler s(c);
  std::map<RequestId, std::vector<int32_t>> tokens;
  for (int r = 0; r < n; ++r) {
    tokens[r] = prompt_of(4, 100 * r + 1);
    s.add_request(r, tokens[r], params(16));
  }
  int max_deferred = 0, nonzero_run = 0, longest_nonzero_run = 0;
  while (s.has_unfinished()) {
    for (const SchedulerEvent& e : run_step(s)) {
      if ((e.kind == EventKind::kToken || e.kind == EventKind::kFinished) && e.token >= 0) {
        tokens[e.request_id].push_back(e.token);
      }
    }
    const int deferred = s.block_tables().num_deferred_blocks();
    max_deferred = std::max(max_deferred, deferred);
    nonzero_run = deferred > 0 ? nonzero_run + 1 : 0;
    longest_nonzero_run = std::max(longest_nonzero_run, nonzero_run);
  }
  EXPECT_GT(max_deferred, 0);        // a burst is more than one commit registers
  EXPECT_LT(max_deferred, n);        // and that commit registered part of it
  EXPECT_LE(longest_nonzero_run, 2); // drained within two commits
  for (const auto& [id, t] : tokens) {
    const int full = static_cast<int>(t.size() - 1) / 4 * 4;  // the last token's KV is never computed
    std::vector<int32_t> query(t.begin(), t.begin() + full);
    query.push_back(7);
    EXPECT_EQ(s.block_tables().cached_prefix_length(query), full) << "request " << id;
  }
}

// Found in review: with registration deferred to commit, a request admitted in the step where a
// running sequence's decode fills a block no longer found that block (synchronous loop). step()
// registers before admitting, so it does again.
TEST(Scheduler, ARequestAdmittedInTheStepThatFillsABlockFindsIt) {
  Scheduler s(small_config(16, 4));
  s.add_request(1, prompt_of(3), params(8));
  s.step();
  s.commit(std::vector<int32_t>{50});  // request 1 = [1 2 3 | 50]
  s.add_request(2, std::vector<int32_t>{1, 2, 3, 50, 7}, params(8));
  auto plan = s.step();  // request 1's decode fills block 0; request 2 is admitted after it
  EXPECT_EQ(plan->num_tokens, 2);  // one decode row and request 2's one uncached token
  std::vector<int32_t> sampled(plan->num_samples(), 60);
  for (const SchedulerEvent& e : s.commit(sampled)) {
    if (e.request_id == 2) EXPECT_EQ(e.num_cached_tokens, 4);
  }
  s.check_invariants();
}

// The overlapped loop: a decoding sequence is planned again before its token is committed; the
// new row's input is the previous plan's sample, its slot reserved, its block hashed at commit.
TEST(Scheduler, OverlappedStepDefersTheInput) {
  Scheduler s(small_config(16, 4));
  s.add_request(1, prompt_of(3), params(4));
  auto first = s.step();  // prefill of 3 tokens, samples position 3
  ASSERT_EQ(first->num_samples(), 1);
  auto second = s.step();  // position 3 with the input sampled by `first`
  EXPECT_EQ(second->num_tokens, 1);
  EXPECT_EQ(second->positions, vec({3}));
  EXPECT_EQ(second->input_ids, vec({0}));
  EXPECT_EQ(second->deferred_input_rows, vec({0}));
  EXPECT_EQ(second->deferred_input_samples, vec({0}));
  EXPECT_EQ(second->context_lens, vec({4}));
  EXPECT_EQ(second->slot_mapping, vec({first->slot_mapping[0] + 3}));
  s.check_invariants();
  auto events = s.commit(std::vector<int32_t>{50});  // first's token: position 3
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].token, 50);
  // Block 0 (tokens 1, 2, 3, 50) is full: a new request with the same 4 tokens + 1 hits it.
  EXPECT_EQ(s.block_tables().cached_prefix_length(std::vector<int32_t>{1, 2, 3, 50, 9}), 4);
  auto third = s.step();  // position 4, input sampled by `second`
  EXPECT_EQ(third->positions, vec({4}));
  EXPECT_EQ(third->deferred_input_samples, vec({0}));
  events = s.commit(std::vector<int32_t>{51});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].token, 51);
  s.check_invariants();
}

TEST(Scheduler, OverlappedStepDropsTheRowOfASequenceItsTokenEnded) {
  Scheduler s(small_config(16, 4));
  RequestParams p = params(8);
  p.eos_token_ids = {2};
  s.add_request(1, prompt_of(3), p);
  s.step();
  auto second = s.step();
  ASSERT_EQ(second->num_deferred(), 1);
  auto events = s.commit(std::vector<int32_t>{2});  // EOS: finished, blocks freed
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, EventKind::kFinished);
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_EQ(s.stats().num_used_blocks, 0);
  EXPECT_TRUE(s.commit(std::vector<int32_t>{77}).empty());  // the extra row's token is dropped
  s.check_invariants();
}

TEST(Scheduler, OverlapWaitsWhereTheTokenEndsTheSequenceByLength) {
  Scheduler s(small_config(16, 4));
  s.add_request(1, prompt_of(3), params(2));
  s.add_request(2, prompt_of(3, 20), params(1));  // its first token is its last
  auto first = s.step();
  ASSERT_EQ(first->num_samples(), 2);
  auto second = s.step();  // request 1 only: position 3, input deferred
  EXPECT_EQ(second->seq_request_ids, std::vector<int64_t>({1}));
  EXPECT_EQ(second->num_deferred(), 1);
  s.commit(std::vector<int32_t>{40, 41});  // request 2 finishes (length)
  EXPECT_FALSE(s.has_request(2));
  auto third = s.step();  // request 1's second token (from `second`) is its last: nothing runs
  EXPECT_EQ(third->num_tokens, 0);
  auto events = s.commit(std::vector<int32_t>{42});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, EventKind::kFinished);
  s.commit(std::vector<int32_t>{});
  EXPECT_FALSE(s.has_unfinished());
  s.check_invariants();
}

TEST(Scheduler, AnUncommittedForkIsNeverPreempted) {
  SchedulerConfig c = small_config(4, 4);  // 16 slots
  Scheduler s(c);
  s.add_request(1, prompt_of(8), params(3));  // 2 full blocks
  s.add_request(2, prompt_of(6, 50), params(2, 2));  // 2 blocks, forks into 2 at its commit
  auto first = s.step();
  ASSERT_EQ(first->num_samples(), 3);
  // Request 1 needs a third block for position 8 in a pool with none free: the only other running
  // sequence has an uncommitted fork, so request 1 itself waits (preempted), not request 2.
  auto second = s.step();
  s.check_invariants();
  auto events = s.commit(std::vector<int32_t>{60, 61, 62});
  s.check_invariants();
  EXPECT_EQ(s.stats().num_running, 2);
  int tokens_of_2 = 0;
  for (const auto& e : events) tokens_of_2 += e.request_id == 2 && e.kind == EventKind::kToken;
  EXPECT_EQ(tokens_of_2, 2);
  s.commit(std::vector<int32_t>(second->num_samples(), 63));
  s.check_invariants();
}

// The fake sampler's token for the sequence's `position`: a pure function, so the input every row
// should read is known, and EOS (3) now and then.
int32_t fake_token(int64_t request, int seq_index, int position) {
  const uint32_t h = static_cast<uint32_t>(request * 7919 + seq_index * 104729 + position * 1299709) * 2654435761u;
  return (h >> 7) % 23 == 0 ? 3 : 10 + static_cast<int32_t>((h >> 9) % 4000);
}

// Thousands of requests with random lengths, arrivals, priorities and n, a fake sampler and a
// pool small enough to force preemption: every row reads the input the sequence holds at its
// position (deferred inputs resolved through the previous plan's samples), every sequence ends at
// its first EOS or at max_tokens with exactly those tokens, the invariants hold after every step,
// and the pool is empty at the end. `overlapped` plans each step before committing the previous
// one, as the engine's overlapped loop does.
void simulate(PreemptionMode mode, bool prefix_caching, uint32_t seed, bool overlapped = false) {
  std::mt19937 rng(seed);
  SchedulerConfig c;
  c.num_blocks = 48;
  c.block_size = 4;
  c.max_num_seqs = 16;
  c.max_num_batched_tokens = 40;
  c.max_model_len = 150;
  c.enable_prefix_caching = prefix_caching;
  c.preemption_mode = mode;
  c.num_host_blocks = mode == PreemptionMode::kSwap ? 40 : 0;
  Scheduler s(c);
  const int kRequests = 2000;
  std::map<int64_t, std::vector<int32_t>> prompts;
  std::map<int64_t, RequestParams> params_of;
  std::map<std::pair<int64_t, int>, int> produced;    // (request, seq) -> tokens
  std::map<std::pair<int64_t, int>, bool> finished;
  int added = 0, steps = 0, deferred_rows = 0;
  std::shared_ptr<const StepPlan> previous;
  std::vector<int32_t> previous_sampled;
  auto apply = [&](const std::vector<SchedulerEvent>& events) {
    for (const auto& e : events) {
      if (e.kind != EventKind::kToken && e.kind != EventKind::kFinished) continue;
      const std::pair<int64_t, int> key{e.request_id, e.seq_index};
      ASSERT_FALSE(finished[key]) << "a token after the end";
      const int position = static_cast<int>(prompts[e.request_id].size()) + produced[key];
      ASSERT_EQ(e.token, fake_token(e.request_id, e.seq_index, position));
      ++produced[key];
      if (e.kind == EventKind::kFinished) {
        finished[key] = true;
        const bool eos = e.token == 3;
        ASSERT_EQ(e.finish_reason, eos ? FinishReason::kStop : FinishReason::kLength);
        if (!eos) ASSERT_EQ(produced[key], params_of[e.request_id].max_tokens);
      }
    }
  };
  while ((added < kRequests || s.has_unfinished()) && steps < 200000) {
    for (int k = std::uniform_int_distribution<int>(0, 3)(rng); k > 0 && added < kRequests; --k) {
      RequestParams p;
      p.max_tokens = std::uniform_int_distribution<int>(1, 40)(rng);
      p.n = std::uniform_int_distribution<int>(0, 9)(rng) == 0 ? 2 : 1;
      p.priority = std::uniform_int_distribution<int>(0, 2)(rng);
      p.eos_token_ids = {3};
      const int len = std::uniform_int_distribution<int>(1, 60)(rng);
      std::vector<int32_t> prompt(len);
      const int family = std::uniform_int_distribution<int>(0, 3)(rng);  // shared prefixes
      for (int i = 0; i < len; ++i) prompt[i] = i < 16 ? family * 100 + i : std::uniform_int_distribution<int>(0, 999)(rng);
      s.add_request(added, prompt, p);
      prompts[added] = prompt;
      params_of[added] = p;
      ++added;
    }
    auto plan = s.step();
    ++steps;
    ASSERT_LE(plan->num_tokens, c.max_num_batched_tokens);
    ASSERT_LE(plan->num_seqs, c.max_num_seqs);
    std::vector<int32_t> inputs = plan->input_ids;
    for (int i = 0; i < plan->num_deferred(); ++i) {
      ASSERT_TRUE(overlapped && previous);
      inputs[plan->deferred_input_rows[i]] = previous_sampled[plan->deferred_input_samples[i]];
      ++deferred_rows;
    }
    std::vector<int32_t> sampled(plan->num_samples());
    for (int j = 0; j < plan->num_samples(); ++j) {
      const int64_t rid = plan->sample_request_ids[j];
      sampled[j] = fake_token(rid, plan->sample_seq_indices[j], plan->positions[plan->logits_indices[j]] + 1);
    }
    // Every row reads what its sequence holds at that position (the prompt, or a sampled token).
    for (int i = 0; i < plan->num_seqs; ++i) {
      const int64_t rid = plan->seq_request_ids[i];
      const int last = plan->query_start_loc[i + 1] - 1;
      int seq_index = -1;
      for (int j = 0; j < plan->num_samples(); ++j) {
        if (plan->logits_indices[j] == last) seq_index = plan->sample_seq_indices[j];
      }
      for (int row = plan->query_start_loc[i]; row <= last; ++row) {
        const int position = plan->positions[row];
        const std::vector<int32_t>& prompt = prompts[rid];
        if (position < static_cast<int>(prompt.size())) {
          ASSERT_EQ(inputs[row], prompt[position]) << "request " << rid << " position " << position;
        } else if (seq_index >= 0) {
          ASSERT_EQ(inputs[row], fake_token(rid, seq_index, position)) << "request " << rid << " position " << position;
        }
      }
    }
    if (!overlapped) {
      apply(s.commit(sampled));
    } else if (previous) {
      apply(s.commit(previous_sampled));
    }
    previous = plan;
    previous_sampled = sampled;
    if (overlapped && plan->num_tokens == 0) {  // nothing runs: commit it at once, as the engine does
      apply(s.commit(sampled));
      previous.reset();
    }
    if (!overlapped) previous.reset();
    s.check_invariants();
  }
  if (previous) apply(s.commit(previous_sampled));
  ASSERT_EQ(s.num_uncommitted_steps(), 0);
  ASSERT_FALSE(s.has_unfinished()) << "did not drain in " << steps << " steps";
  for (const auto& [rid, p] : params_of) {
    for (int k = 0; k < p.n; ++k) ASSERT_TRUE((finished[{rid, k}])) << rid << "/" << k;
  }
  const SchedulerStats st = s.stats();
  EXPECT_GT(st.num_preemptions, 0) << "pool was not small enough to force preemption";
  EXPECT_EQ(st.num_used_blocks, 0);
  EXPECT_EQ(st.num_running + st.num_waiting + st.num_swapped, 0);
  if (prefix_caching) {
    EXPECT_GT(st.num_prefix_hit_tokens, 0);
  }
  if (overlapped) EXPECT_GT(deferred_rows, 1000);
}

TEST(SchedulerSimulation, RecomputeWithPrefixCaching) { simulate(PreemptionMode::kRecompute, true, 1); }
TEST(SchedulerSimulation, RecomputeWithoutPrefixCaching) { simulate(PreemptionMode::kRecompute, false, 2); }
TEST(SchedulerSimulation, SwapWithPrefixCaching) { simulate(PreemptionMode::kSwap, true, 3); }
TEST(SchedulerSimulation, OverlappedRecomputeWithPrefixCaching) { simulate(PreemptionMode::kRecompute, true, 4, true); }
TEST(SchedulerSimulation, OverlappedSwapWithPrefixCaching) { simulate(PreemptionMode::kSwap, true, 5, true); }
TEST(SchedulerSimulation, OverlappedRecomputeWithoutPrefixCaching) { simulate(PreemptionMode::kRecompute, false, 6, true); }

}  // namespace
}  // namespace pagedcore
