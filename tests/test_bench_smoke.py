"""`scripts/bench.py --smoke` end to end: real mounts, a real server, direct curl/requests.

Fails when the benchmark breaks: a crash, a missing row, or a row without numbers.
"""

from __future__ import annotations

import hashlib
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


@pytest.mark.parametrize("mode", ["range", "stream"])
def test_sequential_ceiling_serves_the_assets_bytes(tmp_path: Path, mode: str) -> None:
    """The ceiling the cold sequential rows are measured against reads a real asset through
    FUSE from the local server, byte for byte: a figure from it is not a shortcut's."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    import bench
    from benchlib import Cleanup

    args = bench.parse_args(["--smoke", "--workdir", str(tmp_path)])
    sizes = bench.sizes_for(args)
    sizes.small_files = 4
    work = tmp_path / "work"
    work.mkdir()
    cleanup = Cleanup()
    try:
        world = bench.Bench(args, sizes, work, cleanup)
        big = world.assets["big"][0]
        options = ["--url", world.asset_url(big, mode), "--size", str(big.size)]
        options += ["--chunk", "1", "--window", "3"] + (["--stream"] if mode == "stream" else [])
        with world.ceiling(options) as ceiling:
            served = (ceiling.path / "big.bin").read_bytes()
        assert len(served) == big.size > 3 << 20
        assert hashlib.sha256(served).digest() == hashlib.sha256(big.blob.read_bytes()).digest()
    finally:
        cleanup.run()
    assert not any(p.is_mount() for p in work.iterdir())
