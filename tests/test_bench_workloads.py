"""The benchmark workloads and floors match docs/benchmarks.md (the figures it quotes), and
the W3 simulation counts what it says. CPU only, seconds."""

import pytest

from pagedcore.bench import common
from pagedcore.bench.memory import simulate
from pagedcore.loaders.config import ModelConfig


def test_w1_draw_has_the_published_totals():
    requests = common.w1_requests()
    assert len(requests) == 256
    assert common.num_prompt_tokens(requests) == common.W1_PROMPT_TOKENS == 142_827
    assert common.num_output_tokens(requests) == common.W1_OUTPUT_TOKENS == 133_966


def test_w1_floor_on_h200_is_the_published_3_98_s():
    shape = common.ModelShape.from_config(ModelConfig.from_hf_dict(common.QWEN3_0_6B))
    floor = common.workload_floor(shape, common.w1_requests(), matmul_flops_per_s=769e12,
                                  bandwidth_bytes_per_s=3.97e12, dtype_bytes=2)
    assert floor.seconds == pytest.approx(3.98, rel=0.01)
    assert common.W1_OUTPUT_TOKENS / floor.seconds == pytest.approx(33_700, rel=0.01)


def test_w5_floor_counts_about_1_6_tflop():
    shape = common.ModelShape(num_layers=30, hidden_size=576, intermediate_size=1536, num_heads=9, num_kv_heads=3,
                              head_dim=64, vocab_size=49152)  # SmolLM2-135M
    requests = common.w5_requests()
    assert len(requests) == 32 and all(r.max_tokens == 64 for r in requests)
    floor = common.workload_floor(shape, requests, matmul_flops_per_s=178e9, bandwidth_bytes_per_s=None,
                                  dtype_bytes=4)
    assert floor.total_flops == pytest.approx(1.6e12, rel=0.05)
    assert floor.seconds == pytest.approx(9.0, rel=0.05)


def test_w2_shares_the_prefix_within_a_set_and_nothing_across_seeds():
    first = common.w2_requests(128, 8, (32, 256), 32, seed="a")
    second = common.w2_requests(128, 8, (32, 256), 32, seed="b")
    assert all(r.prompt_token_ids[:128] == first[0].prompt_token_ids[:128] for r in first)
    assert all(32 <= len(r.prompt_token_ids) - 128 <= 256 for r in first)
    assert first[0].prompt_token_ids[:16] != second[0].prompt_token_ids[:16]
    assert common.w2_requests(0, 4, (32, 256), 32, seed="a")[0].prompt_token_ids != \
        common.w2_requests(0, 4, (32, 256), 32, seed="b")[0].prompt_token_ids


def test_memory_simulation_paged_fits_more_sequences_than_contiguous():
    requests = [common.Request(list(range(1, 41)), 24) for _ in range(12)]  # 64 tokens each at the end
    contiguous = simulate(requests, num_blocks=64, block_size=16, max_num_seqs=2, max_model_len=256,
                          reserved_slots_per_seq=256, max_num_batched_tokens=512)
    paged = simulate(requests, num_blocks=32, block_size=16, max_num_seqs=64, max_model_len=256,
                     reserved_slots_per_seq=None, max_num_batched_tokens=512)
    assert contiguous["max_concurrent_seqs"] == 2  # 512 slots / 256 reserved per sequence
    assert contiguous["utilization_at_peak"] <= 64 / 256
    assert paged["max_concurrent_seqs"] >= 8  # 512 slots / 64 tokens
    assert 0.5 < paged["utilization_at_peak"] <= 1.0


def test_latency_server_args_add_to_the_presets():
    """--server-args once replaced the preset's server flags (a GPU run lost --device cuda and
    --load-format dummy, and the server exited with a usage error)."""
    from pagedcore.bench import latency

    preset = latency.PRESETS["gpu"]["server_args"]
    args = latency.resolve_args(["--preset", "gpu", "--rates", "4", "--server-args", "--no-async-scheduling"])
    assert args.server_args == [*preset, "--no-async-scheduling"] and args.rates == [4.0]
    assert latency.resolve_args(["--preset", "cpu"]).server_args == latency.PRESETS["cpu"]["server_args"]


def test_plots_compare_draws_latency_runs_of_several_builds(tmp_path, capsys):
    """`python -m pagedcore.bench.plots --compare OUT.png LABEL=RESULT.json ...`: one figure; a result of
    another benchmark or an argument without a label is refused by name."""
    pytest.importorskip("matplotlib")
    import json

    from pagedcore.bench import plots

    def result(name, benchmark="latency", scale=1.0):
        rows = [{"rate": rate, **{f"{k}_{p}_s": scale * rate * (2 if p == "p99" else 1) / 1e3
                                  for k in ("ttft", "itl") for p in ("p50", "p99")}} for rate in (4.0, 8.0)]
        path = tmp_path / name
        path.write_text(json.dumps({"benchmark": benchmark, "preset": "gpu", "device": "test", "date": "today",
                                    "rows": rows}))
        return str(path)

    out = tmp_path / "compare.png"
    assert plots.main(["--compare", str(out), f"before={result('a.json')}", f"before={result('b.json', scale=2)}",
                       f"after={result('c.json', scale=0.5)}"]) == 0
    assert out.stat().st_size > 10_000
    assert plots.main(["--compare", str(out), f"x={result('t.json', benchmark='throughput')}"]) == 2
    assert "is a throughput result" in capsys.readouterr().err
    assert plots.main(["--compare", str(out), result("d.json")]) == 2
    assert "LABEL=RESULT.json" in capsys.readouterr().err
