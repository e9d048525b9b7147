#include "pagedcore/prefix_hash.h"

namespace pagedcore {
namespace {

// splitmix64 finalizer: a strong, cheap 64-bit avalanche.
inline uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

}  // namespace

uint64_t hash_block_tokens(uint64_t parent_hash, const int32_t* tokens, size_t num_tokens,
                           std::string_view extra_key) {
  uint64_t h = mix(parent_hash ^ 0x6a09e667f3bcc908ULL);
  for (size_t i = 0; i < num_tokens; ++i) {
    h = mix(h ^ static_cast<uint32_t>(tokens[i]));
  }
  h = mix(h ^ (num_tokens * 0x9e3779b97f4a7c15ULL));
  for (unsigned char c : extra_key) h = mix(h ^ c);
  return mix(h ^ extra_key.size());
}

}  // namespace pagedcore
