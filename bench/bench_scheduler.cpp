// bench_paged scheduler: latency of one step() + commit() with N running decode sequences, in the
// synchronous protocol (step t, commit t) and the overlapped one the engine runs by default (step
// t + 1 planned before commit t: every decode row's input deferred).
// Goal: well under the few milliseconds of a GPU decode step (target < 30 us at 256 sequences).
#include <cstdint>
#include <memory>
#include <vector>

#include "bench_common.h"
#include "pagedcore/scheduler.h"

namespace pagedcore::bench {
namespace {

struct DecodeTiming {
  Summary step_commit_us;
  int num_running = 0;
};

DecodeTiming time_decode_steps(int num_seqs, int block_size, int num_steps, bool overlapped) {
  const int prompt_len = 64;
  SchedulerConfig c;
  c.block_size = block_size;
  c.max_num_seqs = num_seqs;
  c.max_num_batched_tokens = std::max(8192, num_seqs);
  c.max_model_len = prompt_len + num_steps + 64;
  c.num_blocks = num_seqs * ((c.max_model_len + block_size - 1) / block_size);
  Scheduler s(c);
  RequestParams p;
  p.max_tokens = num_steps + 32;
  p.ignore_eos = true;
  for (int r = 0; r < num_seqs; ++r) {
    std::vector<int32_t> prompt(prompt_len);
    for (int i = 0; i < prompt_len; ++i) prompt[i] = r * 1000 + i;  // distinct: no prefix sharing
    s.add_request(r, prompt, p);
  }
  std::vector<int32_t> sampled;
  std::shared_ptr<const StepPlan> in_flight;  // overlapped: the planned step not committed yet
  auto fake_tokens = [&](const StepPlan& plan) {
    sampled.resize(plan.num_samples());
    for (size_t i = 0; i < sampled.size(); ++i) sampled[i] = static_cast<int32_t>(i % 30000 + 10);
  };
  auto run_one = [&]() {
    auto plan = s.step();
    if (!overlapped) {
      fake_tokens(*plan);
      return s.commit(sampled).size();
    }
    size_t events = 0;
    if (in_flight) {
      fake_tokens(*in_flight);
      events = s.commit(sampled).size();
    }
    in_flight = plan;
    return events;
  };
  // Prefill everything until every sequence decodes one token per step.
  while (true) {
    auto plan = s.step();
    const bool all_decode = plan->num_decode_seqs == num_seqs;
    sampled.assign(plan->num_samples(), 7);
    s.commit(sampled);
    if (all_decode) break;
  }
  for (int i = 0; i < 20; ++i) run_one();  // warm-up
  std::vector<double> us;
  us.reserve(num_steps);
  for (int i = 0; i < num_steps; ++i) {
    const auto t0 = Clock::now();
    run_one();
    us.push_back(seconds_since(t0) * 1e6);
  }
  DecodeTiming t;
  t.step_commit_us = summarize(us);
  t.num_running = s.stats().num_running;
  return t;
}

}  // namespace

int run_scheduler_bench(const Flags& flags) {
  const bool json = flags.has("json");
  const int block_size = static_cast<int>(flags.get_int("block-size", 16));
  const int num_steps = static_cast<int>(flags.get_int("steps", 2000));
  Table table({"protocol", "running_decode_seqs", "steps", "median_us", "p99_us", "mean_us", "ns_per_seq"});
  for (bool overlapped : {false, true}) {
    for (int n : {64, 256, 1024}) {
      const DecodeTiming t = time_decode_steps(n, block_size, num_steps, overlapped);
      if (t.num_running != n) throw std::runtime_error("scheduler bench: sequences finished early");
      table.add_row({overlapped ? "overlapped" : "synchronous", std::to_string(n), std::to_string(num_steps),
                     fmt(t.step_commit_us.median, 2), fmt(t.step_commit_us.p99, 2), fmt(t.step_commit_us.mean, 2),
                     fmt(t.step_commit_us.median / n * 1000.0, 1)});
    }
  }
  table.print(json, "bench_paged scheduler: step() + commit() latency, all sequences decoding (block_size=" +
                        std::to_string(block_size) + ")");
  return 0;
}

}  // namespace pagedcore::bench
