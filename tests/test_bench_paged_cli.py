"""bench_paged's command line: an option its mode does not know is refused by name, never ignored
(a mistyped --kv-cache-dtype once would have measured a bf16 cache under an FP8 label)."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def test_bench_paged_refuses_an_unknown_option_by_name():
    exe = shutil.which("bench_paged")
    if exe is None:
        pytest.skip("bench_paged is not on PATH (pip install . puts it there)")
    result = subprocess.run([exe, "pool", "--num-block", "8"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown option --num-block for pool; known: --json, --block-size, --num-blocks" in result.stderr
