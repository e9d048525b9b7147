#include <cstdio>
#include <vector>

#include <pagedcore/pagedcore.h>

int main() {
  pagedcore::BlockTables tables(/*num_blocks=*/8, /*block_size=*/4);
  tables.add_sequence(1);
  std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6};
  std::vector<pagedcore::BlockCopy> copies;
  if (!tables.append(1, prompt, copies)) return 1;
  tables.check_invariants();
  const pagedcore::PoolStats st = tables.stats();
  std::printf("consumer ok: %d used blocks, cuda=%d\n", st.num_used_blocks, pagedcore::built_with_cuda());
  return st.num_used_blocks == 2 ? 0 : 1;
}
