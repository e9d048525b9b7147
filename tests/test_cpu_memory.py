"""The CPU engine keeps the memory its steps free (_core.cpu_keep_freed_memory, called by the model
runner on the CPU): tensors of megabytes allocated again after a free are not faulted in afresh, and
the heap does not grow while they are. Each case runs in its own process: malloc's settings are
process-wide."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


pytestmark = pytest.mark.skipif(not glibc(), reason="malloc's thresholds are glibc's")

# Prints `setup`'s output, then the minor page faults and the resident-memory growth of 20 allocate /
# fill / free rounds of a 40 MiB tensor (above glibc's own largest mmap threshold, 32 MiB, below its
# thread arenas' 64 MiB, and about the size of a CPU prefill's MLP activations), run in the main
# thread or in another one, after 12 warm-up rounds. Kept blocks settle in the heap within the first
# rounds (each 64-byte-aligned 40 MiB block needs a little more than the hole the last one left, so
# the heap grows a few blocks first, a round or two later in some runs): KEPT bounds the faults of the
# 20 measured rounds at a quarter of the pages that mapping every block afresh faults in.
FAULTS = textwrap.dedent("""
    import resource, sys, threading, torch
    {setup}
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    def rounds(n):
        for _ in range(n):
            t = torch.empty(10 << 20)
            t.fill_(1.0)
            del t
    def measure():
        rounds(12)
        before, rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, rss()
        rounds(20)
        print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, rss() - rss_before)
    if {in_thread}:
        worker = threading.Thread(target=measure)
        worker.start()
        worker.join()
    else:
        measure()
""")
BLOCK = 40 << 20
PAGES_PER_ROUND = BLOCK // 4096
FRESH = 20 * PAGES_PER_ROUND // 2  # at least this many faults when every block is mapped afresh
KEPT = 5 * PAGES_PER_ROUND  # at most this many when freed blocks are kept
KEEP = "from pagedcore import _core\nprint(_core.cpu_keep_freed_memory(256 << 20))"


def run_clean(setup: str, extra: dict | None = None, in_thread: bool = False) -> tuple[int, int, str]:
    """(faults, resident growth in bytes, setup's output) in a process without malloc settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "PAGEDCORE_KEEP_FREED_MEMORY")}
    out = subprocess.run([sys.executable, "-c", FAULTS.format(setup=setup, in_thread=in_thread)],
                         capture_output=True, text=True, env={**env, **(extra or {})}, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    _, faults, growth = lines[-1].split()
    return int(faults), int(growth), "\n".join(lines[:-1])


def check_kept(threshold: int, faults: int, growth: int) -> None:
    """What a threshold the call returned implies for the 40 MiB rounds."""
    assert threshold in (256 << 20, 32 << 20)  # 32 MiB: a glibc that refuses more (before 2.35)
    if threshold == 256 << 20:
        assert faults < KEPT
        assert growth <= KEPT * 4096  # a few blocks at most: no growth without bound (20 blocks)
    else:
        assert faults >= FRESH  # 40 MiB blocks are still mapped afresh there


def test_without_it_every_round_faults_its_pages_in():
    # The control: glibc's defaults map a 40 MiB block afresh each time (what the engine paid per layer).
    faults, _, _ = run_clean("")
    assert faults >= FRESH


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "other-thread"])
def test_kept_memory_is_reused_without_faults(in_thread):
    # Another thread has an arena of its own (the server's engine thread), capped at 64 MiB blocks.
    faults, growth, printed = run_clean(KEEP, in_thread=in_thread)
    check_kept(int(printed), faults, growth)


def test_the_cpu_engine_keeps_freed_memory(tmp_path):
    from tiny_models import save_tiny_model

    save_tiny_model(tmp_path, "llama", with_tokenizer=False)
    setup = textwrap.dedent(f"""
        from pagedcore import LLM
        llm = LLM({str(tmp_path)!r}, device="cpu", max_model_len=64, verbose=False)
        print(llm.engine.runner.kept_heap_bytes)
    """)
    faults, growth, printed = run_clean(setup)
    check_kept(int(printed.splitlines()[-1]), faults, growth)


@pytest.mark.parametrize("env", [{"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
                                 {"MALLOC_TRIM_THRESHOLD_": "0"}, {"MALLOC_ARENA_MAX": "2"},
                                 {"PAGEDCORE_KEEP_FREED_MEMORY": "0"}],
                         ids=["tunables", "malloc-threshold-variable", "malloc-arena-variable", "opt-out"])
def test_the_users_own_choice_is_left_alone(env):
    faults, _, printed = run_clean(KEEP, env)
    assert int(printed) == 0
    assert faults >= FRESH  # glibc's defaults (or their settings) map the blocks afresh, as before


@pytest.mark.parametrize("threshold", [0, -1, (512 << 20) + 1])
def test_a_threshold_outside_the_range_changes_nothing(threshold):
    from pagedcore import _core

    assert _core.cpu_keep_freed_memory(threshold) == 0


@pytest.mark.parametrize("value", ["false", "no", "2"])
def test_an_unknown_opt_out_value_is_refused_by_name(value):
    result = subprocess.run([sys.executable, "-c", KEEP], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PAGEDCORE_KEEP_FREED_MEMORY": value})
    assert result.returncode != 0
    assert f"PAGEDCORE_KEEP_FREED_MEMORY={value}: expected 1" in result.stderr


@pytest.mark.parametrize("value", ["1", ""])
def test_one_or_empty_keeps_freed_memory_as_the_default_does(value):
    faults, growth, printed = run_clean(KEEP, {"PAGEDCORE_KEEP_FREED_MEMORY": value})
    check_kept(int(printed), faults, growth)
