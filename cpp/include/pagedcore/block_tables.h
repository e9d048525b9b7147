// Per-sequence block tables over a BlockPool: slot reservation as tokens are appended, prefix
// cache lookup and registration, fork with copy-on-write, and freeing.
//
// A sequence's tokens belong to the caller (the scheduler keeps each one once). The tables keep a
// count, and, with prefix caching, only the tokens whose blocks are not registered in the cache yet
// (a partial last block and full blocks waiting for register_deferred): what hashing them needs.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "pagedcore/block_pool.h"
#include "pagedcore/types.h"

namespace pagedcore {

struct PoolStats {
  int num_blocks = 0;
  int num_used_blocks = 0;
  int num_free_blocks = 0;         // allocatable: never-cached free + cached free
  int num_cached_free_blocks = 0;  // free but still holding reusable prefix KV
  int num_sequences = 0;
  int64_t num_prefix_queries = 0;      // match_prefix calls
  int64_t num_prefix_query_tokens = 0; // prompt tokens looked up
  int64_t num_prefix_hit_tokens = 0;   // of which found in the cache
};

// When a reservation's newly filled blocks enter the prefix cache: now, or by register_deferred()
// (blocks filled by generated tokens: a batch that decodes in lockstep fills a block in every
// sequence at the same step, and registering them all there made that step the scheduler's
// slowest; spread over the next steps, each registers a few).
enum class Registration { kNow, kDeferred };

class BlockTables {
 public:
  // enable_prefix_caching=false never registers or looks up blocks (blocks freed go straight
  // back to the never-cached list).
  BlockTables(int num_blocks, int block_size, bool enable_prefix_caching = true, int hash_bits = 64);

  int block_size() const { return pool_.block_size(); }
  bool prefix_caching_enabled() const { return enable_prefix_caching_; }
  const BlockPool& pool() const { return pool_; }

  // Starts an empty sequence. extra_key (e.g. a cache salt) is folded into every block hash.
  // max_num_tokens > 0 reserves room for the block table of that many tokens and for 4 blocks'
  // unregistered tokens, so decode appends do not reallocate in a step (a deferred backlog past
  // 4 blocks, as a recompute of generated tokens makes, grows the tail once).
  void add_sequence(SeqId seq, std::string extra_key = "", int max_num_tokens = 0);
  bool has_sequence(SeqId seq) const { return seqs_.count(seq) != 0; }

  // Number of leading tokens of `prompt` that match_prefix would take from the cache: whole
  // cached blocks, capped so that at least the last prompt token is left to compute.
  // Does not change any state.
  int cached_prefix_length(std::span<const int32_t> prompt, std::string_view extra_key = "") const;

  // For an empty sequence: shares the longest cached prefix of `prompt` (ref count + 1 each),
  // reserving those tokens; returns the number of cached tokens. Counts one prefix query unless
  // record_stats is false (a caller that may undo the match records it with record_prefix_query).
  int match_prefix(SeqId seq, std::span<const int32_t> prompt, bool record_stats = true);
  void record_prefix_query(int num_query_tokens, int num_hit_tokens);

  // Blocks that append(seq, n tokens) would need (new blocks plus a copy-on-write copy).
  int num_blocks_needed(SeqId seq, int num_new_tokens) const;
  bool can_append(SeqId seq, int num_new_tokens) const {
    return num_blocks_needed(seq, num_new_tokens) <= pool_.num_free_blocks();
  }

  // Reserves slots for `tokens` (whose KV is computed this step). Allocates a block when a
  // boundary is crossed, copies a shared partially filled last block first (appending a
  // {src, dst} pair to `copies`), and registers newly filled blocks in the prefix cache (`when`).
  // Returns false, with no state changed, when the pool has too few free blocks.
  bool append(SeqId seq, std::span<const int32_t> tokens, std::vector<BlockCopy>& copies,
              Registration when = Registration::kNow);

  // Reserves the slot of one token whose id is not known yet (sampled by a step still running on
  // the device: the overlapped loop computes its KV in the next step). A block holding it is not
  // registered in the prefix cache until resolve_pending() gives the id. At most one pending token.
  bool append_pending(SeqId seq, std::vector<BlockCopy>& copies);
  // The pending token's id is known: record it; the blocks it completes are registered deferred.
  void resolve_pending(SeqId seq, int32_t token);

  // Registers up to max_blocks full blocks whose registration was deferred, oldest sequence first;
  // returns how many it took in (registered, or found already cached: a fork's shared blocks).
  // (free() registers a sequence's own first.)
  int register_deferred(int max_blocks);
  // Full blocks waiting for register_deferred.
  int num_deferred_blocks() const;
  bool has_pending(SeqId seq) const { return get(seq).has_pending; }

  // `child` shares every block of `parent` (ref count + 1 each), its token count and its
  // unregistered tokens.
  void fork(SeqId parent, SeqId child);

  // Releases every block of the sequence, last block first, and forgets the sequence.
  void free(SeqId seq);

  int num_tokens(SeqId seq) const { return get(seq).num_tokens; }
  const std::vector<BlockId>& blocks(SeqId seq) const { return get(seq).blocks; }
  // Leading blocks registered in the prefix cache (or taken from it).
  int num_registered_blocks(SeqId seq) const { return get(seq).num_hashed_blocks; }
  // The tokens after those blocks, kept until their blocks are registered (a pending token's
  // placeholder included); always empty without prefix caching.
  const std::vector<int32_t>& unregistered_tokens(SeqId seq) const { return get(seq).tail; }
  // Physical slot (block * block_size + offset) of the token at `position`.
  int32_t slot(SeqId seq, int position) const;

  int num_sequences() const { return static_cast<int>(seqs_.size()); }
  PoolStats stats() const;
  // Empties the prefix cache; false (nothing changed) while any sequence holds blocks.
  bool reset_prefix_cache() {
    if (!seqs_.empty()) return false;
    deferred_.clear();  // every entry's sequence is gone
    deferred_head_ = 0;
    return pool_.reset_prefix_cache();
  }

  // Pool invariants plus: every ref count equals the number of tables holding the block, every
  // table holds exactly the blocks its token count needs and the tokens of its unregistered blocks
  // (none without prefix caching), and (prefix caching) every full block not yet registered
  // belongs to a queued sequence. Throws std::logic_error.
  void check_invariants() const;

 private:
  struct Sequence {
    std::vector<BlockId> blocks;   // [ceil(num_tokens / block_size)] logical -> physical
    int num_tokens = 0;            // tokens with reserved slots
    std::vector<int32_t> tail;     // prefix caching: tokens [num_hashed_blocks * block_size, num_tokens)
    std::string extra_key;
    int num_hashed_blocks = 0;     // leading full blocks registered in (or taken from) the cache
    bool has_pending = false;      // the last token's id is not known yet (append_pending)
    uint64_t queue_ticket = 0;     // != 0: queued in deferred_ under this ticket (full blocks past
                                   // num_hashed_blocks wait there); 0: not queued
    uint64_t last_hash = 0;        // chain state after the hashed blocks
    uint64_t last_cache_id = 0;
  };

  // The cached blocks holding the leading whole blocks of a prompt, found by walking the hash
  // chain from the root, and the chain state after the last of them.
  struct CachedPrefix {
    std::vector<BlockId> blocks;  // [num hit blocks], in prompt order
    uint64_t last_hash;
    uint64_t last_cache_id;
  };

  const Sequence& get(SeqId seq) const;
  Sequence& get(SeqId seq);
  // The key of the block holding block_size tokens from `first`.
  BlockKey key_for(std::string_view extra_key, uint64_t parent_hash, uint64_t parent_cache_id,
                   const int32_t* first) const;
  // Stops at the first miss and before the block holding the prompt's last token (at least that
  // token is left to compute). Changes no state.
  CachedPrefix find_cached_prefix(std::span<const int32_t> prompt, std::string_view extra_key) const;
  // Full blocks before the pending token, if any.
  int num_full_blocks(const Sequence& s) const;
  // Full blocks up to the pending token, if any, at most max_blocks of them, enter the prefix cache
  // (their tokens leave the tail).
  void register_full_blocks(Sequence& s, int max_blocks = 1 << 30);
  // Block num_hashed_blocks, holding block_size tokens from `first`, enters the prefix cache.
  void register_block(Sequence& s, const int32_t* first);
  // Registers every block that the tail and `tokens` (just reserved) fill, hashing whole blocks
  // straight from `tokens`; only the remainder is kept.
  void register_appended(Sequence& s, std::span<const int32_t> tokens);
  // Queues the sequence for register_deferred when it has unregistered full blocks.
  void defer_registration(SeqId seq, Sequence& s);
  bool reserve(SeqId seq, std::span<const int32_t> tokens, bool pending, std::vector<BlockCopy>& copies,
               Registration when);

  BlockPool pool_;
  bool enable_prefix_caching_;
  std::unordered_map<SeqId, Sequence> seqs_;
  // Sequences with deferred registrations, in order, from deferred_head_ on. An entry is live only
  // while its sequence still holds the same ticket: entries of a freed sequence (whose id may come
  // back: a preempted sequence is re-added under its id) or of one already drained are skipped.
  struct DeferredEntry {
    SeqId seq;
    uint64_t ticket;
  };
  std::vector<DeferredEntry> deferred_;
  size_t deferred_head_ = 0;
  uint64_t next_ticket_ = 0;
  int64_t num_prefix_queries_ = 0;
  int64_t num_prefix_query_tokens_ = 0;
  int64_t num_prefix_hit_tokens_ = 0;
};

}  // namespace pagedcore
