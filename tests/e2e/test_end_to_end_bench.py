"""bench/end_to_end.py runs (10 messages): the bench stays usable as the code changes under it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_end_to_end_bench_smoke(tmp_path):
    out = tmp_path / "e2e.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "end_to_end.py"), "--messages", "10",
         "--sessions", "2", "--warmup", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "end-to-end rate" in proc.stdout
    figures = json.loads(out.read_text())["figures"]
    assert figures["e2e_rate"] > 0 and figures["baseline_smtp_rate"] > 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
