"""The CPU engine keeps the memory its steps free (_core.cpu_keep_freed_memory, called by the model
runner on the CPU): tensors of megabytes allocated again after a free are not faulted in afresh.
Each case runs in its own process: malloc's settings are process-wide."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def glibc_version() -> tuple[int, ...] | None:
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
    except (ValueError, OSError, AttributeError):
        return None
    return tuple(int(part) for part in name.split()[1].split(".")[:2]) if name and name.startswith("glibc") else None


GLIBC = glibc_version()
pytestmark = pytest.mark.skipif(GLIBC is None, reason="malloc's thresholds are glibc's")

# Prints the minor page faults of 20 allocate / fill / free rounds of a 40 MiB tensor (above glibc's
# own largest mmap threshold, 32 MiB, and about the size of a CPU prefill's MLP activations), after
# `setup` ran and 12 warm-up rounds. Kept blocks settle in the heap within the first rounds (each
# 64-byte-aligned 40 MiB block needs a little more than the hole the last one left, so the heap grows
# a few blocks first, a round or two later in some runs): KEPT bounds the faults of the 20 measured
# rounds at a quarter of the pages that mapping every block afresh faults in.
FAULTS = textwrap.dedent("""
    import resource, sys, torch
    {setup}
    def rounds(n):
        for _ in range(n):
            t = torch.empty(10 << 20)
            t.fill_(1.0)
            del t
    rounds(12)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(20)
    print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
PAGES_PER_ROUND = (40 << 20) // 4096
FRESH = 20 * PAGES_PER_ROUND // 2  # at least this many faults when every block is mapped afresh
KEPT = 5 * PAGES_PER_ROUND  # at most this many when freed blocks are kept


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    return env


def run_clean(setup: str, extra: dict | None = None) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-c", FAULTS.format(setup=setup)], capture_output=True, text=True,
                         env={**clean_env(), **(extra or {})}, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    return int(lines[-1].split()[1]), "\n".join(lines[:-1])


def test_without_it_every_round_faults_its_pages_in():
    # The control: glibc's defaults map a 40 MiB block afresh each time (what the engine paid per layer).
    count, _ = run_clean("")
    assert count >= FRESH


def test_kept_memory_is_reused_without_faults():
    count, printed = run_clean("from pagedcore import _core\nprint(_core.cpu_keep_freed_memory(256 << 20))")
    assert int(printed) in (256 << 20, 32 << 20)  # 32 MiB: a glibc before 2.35 refuses more
    if GLIBC >= (2, 35):
        assert int(printed) == 256 << 20 and count < KEPT


def test_the_cpu_engine_keeps_freed_memory(tmp_path):
    from tiny_models import save_tiny_model

    save_tiny_model(tmp_path, "llama", with_tokenizer=False)
    setup = textwrap.dedent(f"""
        from pagedcore import LLM
        llm = LLM({str(tmp_path)!r}, device="cpu", max_model_len=64, verbose=False)
    """)
    count, _ = run_clean(setup)
    # glibc before 2.35 keeps blocks of up to 32 MiB only: there the 40 MiB rounds still fault.
    assert count < KEPT if GLIBC >= (2, 35) else count >= FRESH


@pytest.mark.parametrize("env", [{"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
                                 {"MALLOC_TRIM_THRESHOLD_": "0"}], ids=["tunables", "malloc-variable"])
def test_the_users_own_malloc_settings_are_left_alone(env):
    count, printed = run_clean("from pagedcore import _core\nprint(_core.cpu_keep_freed_memory(256 << 20))", env)
    assert int(printed) == 0
    assert count >= FRESH  # their settings map the blocks afresh, as before


@pytest.mark.parametrize("threshold", [0, -1, (512 << 20) + 1])
def test_a_threshold_outside_the_range_changes_nothing(threshold):
    from pagedcore import _core

    assert _core.cpu_keep_freed_memory(threshold) == 0
