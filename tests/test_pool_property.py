"""Property-based test: random add / append / fork / free / prefix lookup sequences against a small
pure-Python model of the pool, checking the native invariant after every operation."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pagedcore

BLOCK_SIZE = 4
NUM_BLOCKS = 12


class ModelPool:
    """Pure-Python model: per-sequence token lists, block lists and ref counts, plus a prefix cache keyed
    by the full token prefix of each cached block (exact, so no hashing subtleties)."""

    def __init__(self):
        self.seqs = {}  # seq -> (tokens, blocks)
        self.refs = [0] * NUM_BLOCKS
        self.cached = {}  # tuple(prefix tokens up to and including the block) -> block
        self.block_key = {}  # block -> that tuple

    def num_free(self):
        return self.refs.count(0)

    def blocks_needed(self, seq, n):
        tokens, blocks = self.seqs[seq]
        need = -(-(len(tokens) + n) // BLOCK_SIZE) - len(blocks)
        if len(tokens) % BLOCK_SIZE and self.refs[blocks[-1]] > 1:
            need += 1
        return need

    def cached_prefix(self, prompt):
        hit = 0
        for i in range((len(prompt) - 1) // BLOCK_SIZE):
            key = tuple(prompt[: (i + 1) * BLOCK_SIZE])
            if key not in self.cached:
                break
            hit += 1
        return hit * BLOCK_SIZE


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "append", "fork", "free", "lookup"]),
        st.integers(0, 5),  # sequence slot
        st.integers(1, 9),  # token count
        st.integers(0, 2),  # token alphabet choice: small alphabets make shared prefixes likely
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_random_operations_keep_the_invariants(operations):
    t = pagedcore.BlockTables(NUM_BLOCKS, BLOCK_SIZE)
    m = ModelPool()
    for op, slot, count, alphabet in operations:
        tokens = [(slot * 7 + k) % (alphabet + 1) for k in range(count)]
        if op == "add" and slot not in m.seqs:
            t.add_sequence(slot)
            hit = t.match_prefix(slot, tokens)
            assert hit == m.cached_prefix(tokens)
            m.seqs[slot] = (tokens[:hit], list(t.blocks(slot)))
            for b in m.seqs[slot][1]:
                m.refs[b] += 1
        elif op == "append" and slot in m.seqs:
            need = m.blocks_needed(slot, count)
            assert t.num_blocks_needed(slot, count) == need
            copies = t.append(slot, tokens)
            if need > m.num_free():
                assert copies is None
            else:
                old_tokens, old_blocks = m.seqs[slot]
                assert copies is not None
                new_blocks = list(t.blocks(slot))
                assert len(copies) <= 1
                if copies:
                    src, dst = copies[0]
                    assert src == old_blocks[-1] and new_blocks[len(old_blocks) - 1] == dst
                    m.refs[src] -= 1
                    m.refs[dst] += 1
                assert new_blocks[: len(old_blocks) - 1] == old_blocks[:-1] or not old_blocks
                for b in new_blocks[len(old_blocks):]:
                    m.refs[b] += 1
                all_tokens = old_tokens + tokens
                m.seqs[slot] = (all_tokens, new_blocks)
                for i in range(len(all_tokens) // BLOCK_SIZE):
                    key = tuple(all_tokens[: (i + 1) * BLOCK_SIZE])
                    m.cached.setdefault(key, new_blocks[i])
                    m.block_key.setdefault(new_blocks[i], key)
        elif op == "fork" and slot in m.seqs:
            child = slot + 100
            if child not in m.seqs:
                t.fork(slot, child)
                m.seqs[child] = (list(m.seqs[slot][0]), list(m.seqs[slot][1]))
                for b in m.seqs[child][1]:
                    m.refs[b] += 1
        elif op == "free" and slot in m.seqs:
            t.free(slot)
            for b in m.seqs.pop(slot)[1]:
                m.refs[b] -= 1
        elif op == "lookup":
            assert t.cached_prefix_length(tokens) <= max(0, (len(tokens) - 1) // BLOCK_SIZE * BLOCK_SIZE)

        t.check_invariants()
        for seq, (toks, blocks) in m.seqs.items():
            # Every append registers the blocks it fills: the tables keep only the partial block's tokens.
            assert t.num_tokens(seq) == len(toks)
            assert t.num_registered_blocks(seq) == len(toks) // BLOCK_SIZE
            assert list(t.unregistered_tokens(seq)) == toks[len(toks) // BLOCK_SIZE * BLOCK_SIZE:]
            assert list(t.blocks(seq)) == blocks
        assert [t.pool.ref_count(b) for b in range(NUM_BLOCKS)] == m.refs
        stats = t.stats()
        assert stats.num_used_blocks + stats.num_free_blocks == NUM_BLOCKS
        assert stats.num_used_blocks == sum(1 for r in m.refs if r > 0)
        # Evictions: an entry survives only while its block still holds that key natively. Evicting a
        # block also orphans every longer prefix chained through it (the native chain verifies parents).
        evicted = [k for k, b in m.cached.items() if not t.pool.is_cached(b) or m.block_key.get(b) != k]
        for key in evicted:
            for other in [k for k in m.cached if k[: len(key)] == key]:
                block = m.cached.pop(other)
                if m.block_key.get(block) == other:
                    del m.block_key[block]
