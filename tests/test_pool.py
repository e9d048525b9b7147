"""The block pool and block tables through pagedcore._core."""

import pytest

import pagedcore


def test_supported_block_sizes_are_powers_of_two_up_to_256():
    assert pagedcore.SUPPORTED_BLOCK_SIZES == (1, 2, 4, 8, 16, 32, 64, 128, 256)


@pytest.mark.parametrize("bad", [0, 3, 24, 512, -1])
def test_unsupported_block_size_is_a_value_error_naming_the_allowed_values(bad):
    with pytest.raises(ValueError, match=r"unsupported block_size .*supported block sizes: 1, 2, 4, 8, 16, 32, 64, 128, 256"):
        pagedcore.BlockTables(num_blocks=8, block_size=bad)


def test_append_prefix_hit_fork_and_copy_on_write():
    t = pagedcore.BlockTables(num_blocks=8, block_size=4)
    prompt = list(range(100, 110))
    t.add_sequence(1)
    assert t.append(1, prompt) == []
    assert t.blocks(1) == [0, 1, 2]
    assert t.slot(1, 9) == 2 * 4 + 1

    t.add_sequence(2)
    assert t.cached_prefix_length(prompt) == 8
    assert t.match_prefix(2, prompt) == 8
    assert t.blocks(2) == [0, 1]
    assert t.pool.ref_count(0) == 2

    t.fork(1, 3)
    assert t.pool.ref_count(2) == 2
    assert t.append(3, [7]) == [(2, 3)]
    assert t.blocks(3) == [0, 1, 3]
    t.check_invariants()

    st = t.stats()
    assert (st.num_prefix_queries, st.num_prefix_query_tokens, st.num_prefix_hit_tokens) == (1, 10, 8)
    assert st.prefix_hit_rate == pytest.approx(0.8)
    for s in (1, 2, 3):
        t.free(s)
    t.check_invariants()
    assert t.stats().num_used_blocks == 0
    assert t.stats().num_cached_free_blocks == 2


def test_out_of_blocks_returns_none_and_changes_nothing():
    t = pagedcore.BlockTables(num_blocks=2, block_size=4)
    t.add_sequence(1)
    assert t.append(1, list(range(8))) == []
    assert t.append(1, [1]) is None
    assert t.num_tokens(1) == 8
    t.check_invariants()


def test_misuse_raises_value_errors():
    t = pagedcore.BlockTables(num_blocks=2, block_size=4)
    with pytest.raises(ValueError, match="unknown sequence 5"):
        t.free(5)
    t.add_sequence(1)
    with pytest.raises(ValueError, match="already exists"):
        t.add_sequence(1)
    with pytest.raises(ValueError, match="outside the pool"):
        t.pool.ref_count(2)
    pool = pagedcore.BlockPool(num_blocks=1, block_size=16)
    b = pool.allocate()
    assert pool.allocate() is None
    pool.release(b)
    with pytest.raises(ValueError, match="release of free block"):
        pool.release(b)


def test_memory_plan_matches_the_closed_form():
    shape = pagedcore.KVCacheShape(num_layers=30, num_kv_heads=3, head_dim=64, dtype_bytes=4, block_size=16)
    plan = pagedcore.plan_kv_memory(shape, 1 << 30)
    assert plan.bytes_per_block == 2 * 30 * 3 * 64 * 4 * 16
    assert plan.num_blocks == (1 << 30) // plan.bytes_per_block
    assert plan.token_capacity == plan.num_blocks * 16
    assert "blocks x 16 tokens" in plan.summary()
    with pytest.raises(ValueError, match="smaller than one block"):
        pagedcore.plan_kv_memory(shape, 1000)
