"""`scripts/bench.py --smoke` end to end: real mounts, a real server, direct curl/requests.

Fails when the benchmark breaks: a crash, a missing row, or a row without numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE_ROWS = {
    "small8_direct",
    "seq_range_direct",
    "seq_stream_direct",
    "ttfb",
    "random1_direct",
    "random8_direct",
    "random_amplification",
    "cpu_range",
    "cpu_stream",
}

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(os.geteuid() != 0, reason="drop_caches needs root"),
]


def test_bench_smoke_writes_every_row_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "results" / "latest.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--smoke",
            "--output",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
            "--docs",
            str(tmp_path / "unused.md"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = {r["key"]: r for r in doc["results"]}
    assert set(rows) == SMOKE_ROWS
    for key, row in rows.items():
        assert isinstance(row["figure"], float) and math.isfinite(row["figure"]), key
        assert row["figure"] > 0, key
        if not key.startswith("cpu_"):  # the CPU rows have no peer in smoke mode
            assert math.isfinite(row["peer_figure"]) and row["peer_figure"] > 0, key
            assert math.isfinite(row["ratio"]), key
    assert doc["nproc"] and doc["kernel"] and doc["cpu"]
    assert (out.parent / "ratios.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not (tmp_path / "unused.md").exists()  # smoke never overwrites the docs
    assert not list((tmp_path / "work").iterdir())  # work dir (mounts, caches) cleaned up
