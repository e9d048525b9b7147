#include "pagedcore/memory_plan.h"

#include <cstdio>
#include <stdexcept>

#include "pagedcore/supported.h"

namespace pagedcore {

std::string format_bytes(int64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char buf[64];
  if (unit == 0) std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(bytes));
  else std::snprintf(buf, sizeof buf, "%.1f %s", value, units[unit]);
  return buf;
}

std::string MemoryPlan::summary() const {
  return "KV cache: " + std::to_string(num_blocks) + " blocks x " + std::to_string(shape.block_size) +
         " tokens = " + std::to_string(token_capacity) + " tokens, " + format_bytes(bytes_per_block) +
         "/block (" + format_bytes(bytes_per_token) + "/token), " + format_bytes(used_bytes) + " of " +
         format_bytes(budget_bytes) + " budget";
}

MemoryPlan plan_kv_memory(const KVCacheShape& shape, int64_t budget_bytes) {
  auto require_positive = [](const char* name, int64_t value) {
    if (value <= 0) {
      throw std::invalid_argument(std::string(name) + " must be positive, got " + std::to_string(value));
    }
  };
  require_positive("num_layers", shape.num_layers);
  require_positive("num_kv_heads", shape.num_kv_heads);
  require_positive("head_dim", shape.head_dim);
  require_positive("dtype_bytes", shape.dtype_bytes);
  check_block_size(shape.block_size);
  require_positive("budget_bytes", budget_bytes);

  MemoryPlan plan;
  plan.shape = shape;
  plan.budget_bytes = budget_bytes;
  plan.bytes_per_token = int64_t{2} * shape.num_layers * shape.num_kv_heads * shape.head_dim * shape.dtype_bytes;
  plan.bytes_per_block = plan.bytes_per_token * shape.block_size;
  plan.num_blocks = budget_bytes / plan.bytes_per_block;
  if (plan.num_blocks == 0) {
    throw std::invalid_argument("KV cache budget " + format_bytes(budget_bytes) +
                                " is smaller than one block, which needs " + format_bytes(plan.bytes_per_block) +
                                " (" + std::to_string(plan.bytes_per_block) + " bytes)");
  }
  plan.token_capacity = plan.num_blocks * shape.block_size;
  plan.used_bytes = plan.num_blocks * plan.bytes_per_block;
  return plan;
}

}  // namespace pagedcore
