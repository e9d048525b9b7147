#include "pagedcore/block_tables.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "pagedcore/prefix_hash.h"

namespace pagedcore {

namespace {
// Unregistered tokens reserved per sequence: a partial block and a few full ones waiting for
// register_deferred (its per-step budget drains a lockstep batch's backlog within a few steps).
constexpr int kTailReserveBlocks = 4;
}  // namespace

BlockTables::BlockTables(int num_blocks, int block_size, bool enable_prefix_caching, int hash_bits)
    : pool_(num_blocks, block_size, hash_bits), enable_prefix_caching_(enable_prefix_caching) {}

const BlockTables::Sequence& BlockTables::get(SeqId seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) throw std::invalid_argument("unknown sequence " + std::to_string(seq));
  return it->second;
}

BlockTables::Sequence& BlockTables::get(SeqId seq) {
  return const_cast<Sequence&>(static_cast<const BlockTables*>(this)->get(seq));
}

void BlockTables::add_sequence(SeqId seq, std::string extra_key, int max_num_tokens) {
  if (seqs_.count(seq)) throw std::invalid_argument("sequence " + std::to_string(seq) + " already exists");
  Sequence s;
  s.extra_key = std::move(extra_key);
  if (max_num_tokens > 0) {
    s.blocks.reserve((max_num_tokens + pool_.block_size() - 1) / pool_.block_size());
    if (enable_prefix_caching_) s.tail.reserve(std::min(max_num_tokens, kTailReserveBlocks * pool_.block_size()));
  }
  s.last_hash = kRootBlockHash;
  seqs_.emplace(seq, std::move(s));
}

BlockKey BlockTables::key_for(std::string_view extra_key, uint64_t parent_hash, uint64_t parent_cache_id,
                              const int32_t* first) const {
  const int bs = pool_.block_size();
  BlockKey key;
  key.hash = hash_block_tokens(parent_hash, first, bs, extra_key) & pool_.hash_mask();
  key.parent_cache_id = parent_cache_id;
  key.tokens = std::span<const int32_t>(first, bs);
  key.extra_key = extra_key;
  return key;
}

BlockTables::CachedPrefix BlockTables::find_cached_prefix(std::span<const int32_t> prompt,
                                                          std::string_view extra_key) const {
  CachedPrefix prefix{{}, kRootBlockHash, 0};
  if (!enable_prefix_caching_ || prompt.empty()) return prefix;
  const int max_blocks = static_cast<int>((prompt.size() - 1) / pool_.block_size());
  for (int i = 0; i < max_blocks; ++i) {
    const BlockKey key = key_for(extra_key, prefix.last_hash, prefix.last_cache_id,
                                 prompt.data() + static_cast<size_t>(i) * pool_.block_size());
    const std::optional<BlockId> hit = pool_.find_cached(key);
    if (!hit) break;
    prefix.blocks.push_back(*hit);
    prefix.last_hash = key.hash;
    prefix.last_cache_id = pool_.cache_id(*hit);
  }
  return prefix;
}

int BlockTables::cached_prefix_length(std::span<const int32_t> prompt, std::string_view extra_key) const {
  return static_cast<int>(find_cached_prefix(prompt, extra_key).blocks.size()) * pool_.block_size();
}

void BlockTables::record_prefix_query(int num_query_tokens, int num_hit_tokens) {
  ++num_prefix_queries_;
  num_prefix_query_tokens_ += num_query_tokens;
  num_prefix_hit_tokens_ += num_hit_tokens;
}

int BlockTables::match_prefix(SeqId seq, std::span<const int32_t> prompt, bool record_stats) {
  Sequence& s = get(seq);
  if (s.num_tokens != 0) throw std::invalid_argument("match_prefix needs an empty sequence; sequence " + std::to_string(seq) + " already holds tokens");
  if (!enable_prefix_caching_ || prompt.empty()) return 0;
  // An empty sequence's chain state is the root (add_sequence), where the walk starts.
  CachedPrefix prefix = find_cached_prefix(prompt, s.extra_key);
  for (BlockId block : prefix.blocks) pool_.acquire_cached(block);
  const size_t num_cached = prefix.blocks.size() * static_cast<size_t>(pool_.block_size());
  s.num_hashed_blocks = static_cast<int>(prefix.blocks.size());
  s.blocks = std::move(prefix.blocks);
  s.num_tokens = static_cast<int>(num_cached);  // whole registered blocks: the tail stays empty
  s.last_hash = prefix.last_hash;
  s.last_cache_id = prefix.last_cache_id;
  if (record_stats) record_prefix_query(static_cast<int>(prompt.size()), static_cast<int>(num_cached));
  return static_cast<int>(num_cached);
}

int BlockTables::num_blocks_needed(SeqId seq, int num_new_tokens) const {
  const Sequence& s = get(seq);
  if (num_new_tokens <= 0) return 0;
  const int bs = pool_.block_size();
  const int64_t total = static_cast<int64_t>(s.num_tokens) + num_new_tokens;
  const int64_t blocks_after = (total + bs - 1) / bs;
  int64_t needed = blocks_after - static_cast<int64_t>(s.blocks.size());
  // Writing into a partially filled block that another table shares needs a private copy.
  if (s.num_tokens % bs != 0 && pool_.ref_count(s.blocks.back()) > 1) ++needed;
  return static_cast<int>(needed);
}

bool BlockTables::append(SeqId seq, std::span<const int32_t> tokens, std::vector<BlockCopy>& copies,
                         Registration when) {
  return reserve(seq, tokens, /*pending=*/false, copies, when);
}

bool BlockTables::append_pending(SeqId seq, std::vector<BlockCopy>& copies) {
  const int32_t placeholder = 0;  // never hashed: register_full_blocks stops before a pending token
  return reserve(seq, std::span<const int32_t>(&placeholder, 1), /*pending=*/true, copies, Registration::kDeferred);
}

bool BlockTables::reserve(SeqId seq, std::span<const int32_t> tokens, bool pending, std::vector<BlockCopy>& copies,
                          Registration when) {
  Sequence& s = get(seq);
  if (tokens.empty()) return true;
  if (s.has_pending) {
    throw std::logic_error("sequence " + std::to_string(seq) + " has a pending token: resolve_pending() it first");
  }
  if (num_blocks_needed(seq, static_cast<int>(tokens.size())) > pool_.num_free_blocks()) return false;
  const int bs = pool_.block_size();
  if (s.num_tokens % bs != 0 && pool_.ref_count(s.blocks.back()) > 1) {
    const BlockId shared = s.blocks.back();
    const BlockId copy = *pool_.allocate();
    copies.push_back({shared, copy});
    pool_.release(shared);
    s.blocks.back() = copy;
  }
  s.num_tokens += static_cast<int>(tokens.size());
  s.has_pending = pending;
  while (s.blocks.size() * bs < static_cast<size_t>(s.num_tokens)) s.blocks.push_back(*pool_.allocate());
  // Registering now (before this step's KV is written) is safe: every layer writes the batch's
  // new K/V before any attention of that layer reads the cache.
  if (enable_prefix_caching_) {
    if (when == Registration::kNow) {
      register_appended(s, tokens);
    } else {
      s.tail.insert(s.tail.end(), tokens.begin(), tokens.end());
      defer_registration(seq, s);
    }
  }
  return true;
}

void BlockTables::register_appended(Sequence& s, std::span<const int32_t> tokens) {
  // (kNow appends are never pending: reserve() refuses a sequence with a pending token, and
  // append_pending defers.) Complete the tail's partial block, register the tail's full blocks.
  const size_t bs = static_cast<size_t>(pool_.block_size());
  const size_t top_up = s.tail.size() % bs == 0 ? 0 : std::min(bs - s.tail.size() % bs, tokens.size());
  s.tail.insert(s.tail.end(), tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(top_up));
  register_full_blocks(s);
  tokens = tokens.subspan(top_up);
  if (!s.tail.empty()) return;  // the top-up took every token (it did not fill its block)
  // At a block boundary: the whole blocks of the rest are hashed where they are.
  size_t used = 0;
  for (; used + bs <= tokens.size(); used += bs) register_block(s, tokens.data() + used);
  s.tail.assign(tokens.begin() + static_cast<std::ptrdiff_t>(used), tokens.end());
}

void BlockTables::resolve_pending(SeqId seq, int32_t token) {
  Sequence& s = get(seq);
  if (!s.has_pending) throw std::logic_error("resolve_pending: sequence " + std::to_string(seq) + " has no pending token");
  if (enable_prefix_caching_) s.tail.back() = token;  // the pending token's block is never registered
  s.has_pending = false;
  // Its KV is written by a step already queued on the device, before any later step reads it.
  if (enable_prefix_caching_) defer_registration(seq, s);
}

int BlockTables::num_full_blocks(const Sequence& s) const {
  return (s.num_tokens - (s.has_pending ? 1 : 0)) / pool_.block_size();
}

void BlockTables::defer_registration(SeqId seq, Sequence& s) {
  if (s.queue_ticket != 0 || s.num_hashed_blocks >= num_full_blocks(s)) return;
  s.queue_ticket = ++next_ticket_;
  deferred_.push_back({seq, s.queue_ticket});
}

int BlockTables::register_deferred(int max_blocks) {
  int done = 0;
  while (done < max_blocks && deferred_head_ < deferred_.size()) {
    const DeferredEntry& entry = deferred_[deferred_head_];
    auto it = seqs_.find(entry.seq);
    if (it == seqs_.end() || it->second.queue_ticket != entry.ticket) {  // freed (it registered its own), or stale
      ++deferred_head_;
      continue;
    }
    Sequence& s = it->second;
    const int before = s.num_hashed_blocks;
    register_full_blocks(s, max_blocks - done);
    done += s.num_hashed_blocks - before;
    if (s.num_hashed_blocks < num_full_blocks(s)) break;  // the budget ran out inside this sequence
    s.queue_ticket = 0;
    ++deferred_head_;
  }
  if (deferred_head_ == deferred_.size()) {
    deferred_.clear();
    deferred_head_ = 0;
  } else if (deferred_head_ > 64 && deferred_head_ * 2 > deferred_.size()) {
    deferred_.erase(deferred_.begin(), deferred_.begin() + static_cast<std::ptrdiff_t>(deferred_head_));
    deferred_head_ = 0;
  }
  return done;
}

int BlockTables::num_deferred_blocks() const {
  int n = 0;
  for (size_t i = deferred_head_; i < deferred_.size(); ++i) {
    auto it = seqs_.find(deferred_[i].seq);
    if (it != seqs_.end() && it->second.queue_ticket == deferred_[i].ticket) {
      n += num_full_blocks(it->second) - it->second.num_hashed_blocks;
    }
  }
  return n;
}

void BlockTables::register_full_blocks(Sequence& s, int max_blocks) {
  const int first = s.num_hashed_blocks;
  const size_t bs = static_cast<size_t>(pool_.block_size());
  // (The tail bound matters inside register_appended, where the count already includes tokens
  // not in the tail yet.)
  const int num_full = std::min({num_full_blocks(s), first + static_cast<int>(s.tail.size() / bs),
                                 first + std::max(max_blocks, 0)});
  if (num_full <= first) return;
  for (int i = first; i < num_full; ++i) register_block(s, s.tail.data() + (i - first) * bs);
  s.tail.erase(s.tail.begin(), s.tail.begin() + static_cast<std::ptrdiff_t>((num_full - first) * bs));
}

void BlockTables::register_block(Sequence& s, const int32_t* first) {
  const BlockKey key = key_for(s.extra_key, s.last_hash, s.last_cache_id, first);
  const BlockId block = s.blocks[s.num_hashed_blocks];
  if (pool_.is_cached(block)) {
    s.last_cache_id = pool_.cache_id(block);
  } else if (std::optional<BlockId> twin = pool_.find_cached(key)) {
    // Another sequence already cached identical KV: chain through that block so lookups that
    // find it also find our children; ours stays uncached and is recycled when freed.
    s.last_cache_id = pool_.cache_id(*twin);
  } else {
    s.last_cache_id = pool_.cache_block(block, key);
  }
  s.last_hash = key.hash;
  ++s.num_hashed_blocks;
}

void BlockTables::fork(SeqId parent, SeqId child) {
  if (seqs_.count(child)) throw std::invalid_argument("sequence " + std::to_string(child) + " already exists");
  const Sequence& original = get(parent);
  if (original.has_pending) throw std::logic_error("fork: sequence " + std::to_string(parent) + " has a pending token");
  Sequence copy = original;
  copy.tail.reserve(original.tail.capacity());  // a copy holds only the size: keep the room
  copy.blocks.reserve(original.blocks.capacity());
  copy.queue_ticket = 0;
  for (BlockId b : copy.blocks) pool_.retain(b);
  Sequence& added = seqs_.emplace(child, std::move(copy)).first->second;
  if (enable_prefix_caching_) defer_registration(child, added);
}

void BlockTables::free(SeqId seq) {
  Sequence& s = get(seq);
  // Deferred registrations first: a finished sequence's blocks stay findable (a follow-up turn
  // that repeats its output hits them).
  if (enable_prefix_caching_ && s.queue_ticket != 0) register_full_blocks(s);
  // Tail first: the LRU list then evicts a sequence's least shareable blocks first.
  for (auto it = s.blocks.rbegin(); it != s.blocks.rend(); ++it) pool_.release(*it);
  seqs_.erase(seq);
}

int32_t BlockTables::slot(SeqId seq, int position) const {
  const Sequence& s = get(seq);
  if (position < 0 || position >= s.num_tokens) {
    throw std::out_of_range("position " + std::to_string(position) + " outside sequence of " +
                            std::to_string(s.num_tokens) + " tokens");
  }
  const int bs = pool_.block_size();
  return s.blocks[position / bs] * bs + position % bs;
}

PoolStats BlockTables::stats() const {
  PoolStats st;
  st.num_blocks = pool_.num_blocks();
  st.num_used_blocks = pool_.num_used_blocks();
  st.num_free_blocks = pool_.num_free_blocks();
  st.num_cached_free_blocks = pool_.num_cached_free_blocks();
  st.num_sequences = num_sequences();
  st.num_prefix_queries = num_prefix_queries_;
  st.num_prefix_query_tokens = num_prefix_query_tokens_;
  st.num_prefix_hit_tokens = num_prefix_hit_tokens_;
  return st;
}

void BlockTables::check_invariants() const {
  pool_.check_invariants();
  const int bs = pool_.block_size();
  std::vector<int32_t> holders(pool_.num_blocks(), 0);
  std::unordered_map<uint64_t, SeqId> live_entries;
  for (size_t i = deferred_head_; i < deferred_.size(); ++i) {
    live_entries.emplace(deferred_[i].ticket, deferred_[i].seq);
  }
  for (const auto& [id, s] : seqs_) {
    const size_t want = (static_cast<size_t>(s.num_tokens) + bs - 1) / bs;
    if (s.blocks.size() != want) {
      throw std::logic_error("block table invariant: sequence " + std::to_string(id) + " holds " +
                             std::to_string(s.blocks.size()) + " blocks for " +
                             std::to_string(s.num_tokens) + " tokens");
    }
    if (s.num_hashed_blocks * bs > s.num_tokens) {
      throw std::logic_error("block table invariant: more hashed blocks than full blocks");
    }
    const size_t tail = enable_prefix_caching_ ? static_cast<size_t>(s.num_tokens - s.num_hashed_blocks * bs) : 0;
    if (s.tail.size() != tail) {
      throw std::logic_error("block table invariant: sequence " + std::to_string(id) + " keeps " +
                             std::to_string(s.tail.size()) + " unregistered tokens, not " + std::to_string(tail));
    }
    if (enable_prefix_caching_ && s.num_hashed_blocks < num_full_blocks(s)) {
      auto e = live_entries.find(s.queue_ticket);
      if (s.queue_ticket == 0 || e == live_entries.end() || e->second != id) {
        throw std::logic_error("block table invariant: sequence " + std::to_string(id) +
                               " has unregistered full blocks but no deferred registration");
      }
    }
    for (BlockId b : s.blocks) ++holders[b];
  }
  for (BlockId b = 0; b < pool_.num_blocks(); ++b) {
    if (holders[b] != pool_.ref_count(b)) {
      throw std::logic_error("block table invariant: block " + std::to_string(b) + " has ref count " +
                             std::to_string(pool_.ref_count(b)) + " but " + std::to_string(holders[b]) +
                             " tables hold it");
    }
  }
}

}  // namespace pagedcore
