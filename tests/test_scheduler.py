"""The native scheduler through pagedcore._core: zero-copy plans, events, errors."""

import numpy as np
import pytest

from pagedcore import _core


def config(**kw):
    settings = dict(block_size=4, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=128,
                    enable_prefix_caching=True, preemption_mode=_core.PreemptionMode.RECOMPUTE)
    return _core.SchedulerConfig(**{**settings, **kw})


def make(num_blocks=32, **kw):
    cfg = config(num_blocks=num_blocks, **kw)
    return _core.Scheduler(cfg)


def test_plan_arrays_are_read_only_zero_copy_views_with_documented_shapes():
    s = make()
    s.add_request(3, [5, 6, 7, 8, 9, 10], _core.RequestParams(max_tokens=2))
    plan = s.step()
    ids = plan.input_ids
    assert ids.dtype == np.int32 and ids.shape == (6,)
    assert np.shares_memory(ids, plan.input_ids)  # the same buffer every time: no copies
    assert not ids.flags.writeable
    assert plan.block_tables.shape == (1, 2)
    assert plan.query_start_loc.tolist() == [0, 6]
    assert plan.slot_mapping.tolist() == [0, 1, 2, 3, 4, 5]
    assert plan.copy_pairs.shape == (0, 2)
    assert plan.sample_request_ids.dtype == np.int64
    assert plan.seq_request_ids.dtype == np.int64 and plan.seq_request_ids.tolist() == [3]
    events = s.commit(np.array([11], dtype=np.int32))
    assert [(e.kind, e.token) for e in events] == [(_core.EventKind.TOKEN, 11)]
    del plan  # the view keeps the plan alive on its own
    assert ids.tolist() == [5, 6, 7, 8, 9, 10]
    plan = s.step()
    assert plan.input_ids.tolist() == [11]
    events = s.commit([12])
    assert events[0].kind == _core.EventKind.FINISHED
    assert events[0].finish_reason == _core.FinishReason.LENGTH
    assert not s.has_unfinished()
    s.check_invariants()


def test_admission_errors_are_value_errors_naming_the_limits():
    s = make(num_blocks=4)
    with pytest.raises(ValueError, match=r"exceeds max_model_len \(128\)"):
        s.add_request(1, list(range(120)), _core.RequestParams(max_tokens=10))
    with pytest.raises(ValueError, match="can never fit the KV cache of 4 blocks x 4 = 16 tokens"):
        s.add_request(1, list(range(12)), _core.RequestParams(max_tokens=10))
    with pytest.raises(ValueError, match="unsupported block_size 6"):
        _core.Scheduler(config(num_blocks=4, block_size=6, max_model_len=16))
    with pytest.raises(ValueError, match="expected 0, got 1"):
        s.step()
        s.commit([1])


def test_prefix_cache_hits_and_abort_free_all_blocks():
    s = make()
    system = list(range(1, 13))
    s.add_request(1, system + [100], _core.RequestParams(max_tokens=4))
    s.commit(np.zeros(s.step().num_samples, dtype=np.int32) + 7)
    s.add_request(2, system + [200], _core.RequestParams(max_tokens=4, n=2))
    plan = s.step()
    assert plan.num_tokens == 1 + 1  # a decode of 1, and only the last prompt token of 2
    events = s.commit(np.full(plan.num_samples, 9, dtype=np.int32))
    assert sorted(e.seq_index for e in events if e.request_id == 2) == [0, 1]
    assert s.stats().prefix_hit_rate > 0.4
    s.abort(1)
    s.abort(2)
    s.check_invariants()
    assert s.stats().num_used_blocks == 0
