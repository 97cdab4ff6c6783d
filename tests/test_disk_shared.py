"""One cache directory shared by processes; the free-space reserve; start-up without a walk."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import struct
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from cometfs.model import AssetKey
from cometfs.reader import disk as disk_module
from cometfs.reader.cachedir import Ledger
from cometfs.reader.disk import DiskCache

BLOCK = 16 * 1024
ENTRY = BLOCK + 16  # the block and its record
CAPACITY = 20 * ENTRY


def payload(name: str, index: int) -> bytes:
    return (f"{name}:{index}:".encode() * BLOCK)[:BLOCK]


def writer(root: str, name: str, blocks: int, results: multiprocessing.Queue[object]) -> None:
    """Child process: write `blocks` blocks of its own asset, report errors."""
    try:
        cache = DiskCache(Path(root), CAPACITY, block_size=BLOCK)
        key = AssetKey("v", name, blocks * BLOCK)
        for index in range(blocks):
            cache.put(key, index, payload(name, index))
        results.put((name, None))
    except BaseException as exc:  # reported to the test, which fails on it
        results.put((name, repr(exc)))


def on_disk(root: Path) -> int:
    """Bytes of the blocks and records the asset files hold, read from their record tables."""
    total = 0
    for path in (root / "v3").iterdir():
        with path.open("rb") as f:
            raw = f.read(20)
            if len(raw) < 20:
                continue  # a file being made: no block yet
            magic, size, block_size = struct.unpack(">4sQQ", raw)
            assert magic == b"CFA3"
            table = f.read(-(-size // block_size) * 16)
        for index, (record, _, _) in enumerate(struct.iter_unpack(">4sIq", table)):
            if record == b"CFB3":
                total += min(block_size, size - index * block_size) + 16
    return total


def test_two_processes_share_one_capacity(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    DiskCache(root, CAPACITY, block_size=BLOCK)  # creates the directory and its lock
    observer = Ledger(root / ".lock")
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[object] = ctx.Queue()
    procs = [
        ctx.Process(target=writer, args=(str(root), name, 2 * CAPACITY // ENTRY, results))
        for name in ("a", "b")
    ]
    for proc in procs:
        proc.start()
    peak = 0
    reports: list[object] = []
    deadline = time.monotonic() + 45
    try:
        while len(reports) < len(procs) and time.monotonic() < deadline:
            # Measured under the lock: no process is booking or evicting meanwhile.
            with observer.locked():
                peak = max(peak, on_disk(root))
            with contextlib.suppress(queue.Empty):
                reports.append(results.get(timeout=0.01))
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    observer.close()
    assert sorted(reports, key=str) == [("a", None), ("b", None)]
    assert peak <= CAPACITY + 2 * ENTRY, "one block in flight per process at most"
    assert on_disk(root) <= CAPACITY
    reader = DiskCache(root, CAPACITY, block_size=BLOCK)
    reader.scan()
    assert reader.usage() == on_disk(root)
    served = 0
    for name in ("a", "b"):
        key = AssetKey("v", name, 2 * CAPACITY // ENTRY * BLOCK)
        for index in range(2 * CAPACITY // ENTRY):
            data = reader.get(key, index, BLOCK)
            assert data is None or data == payload(name, index)
            served += data is not None
    assert served * ENTRY == on_disk(root) > CAPACITY // 2


def test_capacity_counts_blocks_another_instance_wrote(tmp_path: Path) -> None:
    first = DiskCache(tmp_path, 4 * ENTRY, block_size=BLOCK)
    second = DiskCache(tmp_path, 4 * ENTRY, block_size=BLOCK)
    for index in range(4):
        first.put(AssetKey("v", "first", 4 * BLOCK), index, b"1" * BLOCK)
    for index in range(4):
        second.put(AssetKey("v", "second", 4 * BLOCK), index, b"2" * BLOCK)
    assert on_disk(tmp_path) <= 4 * ENTRY
    assert first.get(AssetKey("v", "first", 4 * BLOCK), 0, BLOCK) is None, "LRU, shared"
    assert second.get(AssetKey("v", "second", 4 * BLOCK), 3, BLOCK) == b"2" * BLOCK


class FakeStatvfs(NamedTuple):
    f_frsize: int
    f_blocks: int
    f_bavail: int


GIB = 1 << 30


@pytest.mark.parametrize(
    ("total", "free", "stored"),
    [
        (100 * GIB, 6 * GIB, True),  # reserve 5 GiB (5%)
        (100 * GIB, 5 * GIB, False),  # one block would cross the 5% line
        (4 * GIB, 1 * GIB + 2 * ENTRY, True),  # reserve 1 GiB (5% is less)
        (4 * GIB, 1 * GIB, False),
    ],
)
def test_default_free_space_reserve(tmp_path: Path, total: int, free: int, stored: bool) -> None:
    cache = DiskCache(
        tmp_path,
        CAPACITY,
        block_size=BLOCK,
        statvfs=lambda _path: FakeStatvfs(4096, total // 4096, free // 4096),
    )
    cache.put(AssetKey("v", "a", BLOCK), 0, b"x" * BLOCK)
    assert (cache.get(AssetKey("v", "a", BLOCK), 0, BLOCK) is not None) is stored
    assert cache.skipped_low_space == (0 if stored else 1)


def test_low_space_skips_writes_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    free = [10 * GIB]
    cache = DiskCache(
        tmp_path,
        CAPACITY,
        block_size=BLOCK,
        reserve_bytes=GIB,
        statvfs=lambda _path: FakeStatvfs(1, 100 * GIB, free[0]),
    )
    key = AssetKey("v", "a", 10 * BLOCK)
    cache.put(key, 0, b"x" * BLOCK)
    free[0] = GIB + ENTRY - 1
    with caplog.at_level(logging.WARNING, logger="cometfs.reader.disk"):
        for index in range(1, 4):
            cache.put(key, index, b"x" * BLOCK)
    assert cache.skipped_low_space == 3
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert on_disk(tmp_path) == ENTRY
    free[0] = 10 * GIB
    cache.put(key, 4, b"x" * BLOCK)
    assert on_disk(tmp_path) == 2 * ENTRY


def test_construction_walks_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = DiskCache(tmp_path, CAPACITY, block_size=BLOCK)
    for index in range(5):
        seed.put(AssetKey("v", "a", 5 * BLOCK), index, b"x" * BLOCK)

    def no_walk(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("directory walk during construction")

    monkeypatch.setattr(os, "scandir", no_walk)
    monkeypatch.setattr(Path, "iterdir", no_walk)
    cache = DiskCache(tmp_path, CAPACITY, block_size=BLOCK)
    assert cache.holds(AssetKey("v", "a", 5 * BLOCK), 0), "unknown until scanned: ask get()"
    assert cache.get(AssetKey("v", "a", 5 * BLOCK), 0, BLOCK) == b"x" * BLOCK
    monkeypatch.undo()
    cache.scan()
    assert len(cache) == 5
    assert cache.usage() == 5 * ENTRY
    assert not cache.holds(AssetKey("v", "a", 5 * BLOCK), 7)


def test_put_accepts_any_buffer(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, CAPACITY, block_size=BLOCK)
    key = AssetKey("v", "a", 3 * BLOCK)
    big = bytearray(os.urandom(3 * BLOCK))
    cache.put(key, 0, memoryview(big)[:BLOCK])
    cache.put(key, 1, big[BLOCK : 2 * BLOCK])
    cache.put(key, 2, bytes(big[2 * BLOCK :]))
    for index in range(3):
        assert cache.get(key, index, BLOCK) == bytes(big[index * BLOCK : (index + 1) * BLOCK])


@pytest.mark.parametrize(
    ("old", "block"),
    [
        pytest.param("ab" * 16, "0.blk", id="v1"),  # <root>/<asset dir>/<index>.blk
        pytest.param("v2", "ab" * 16 + "/0.blk", id="v2"),  # <root>/v2/<asset dir>/<index>.blk
    ],
)
def test_old_layout_is_cleaned_by_scan(tmp_path: Path, old: str, block: str) -> None:
    key = AssetKey("v", "a", BLOCK)
    DiskCache(tmp_path, CAPACITY, block_size=BLOCK).put(key, 0, b"x" * BLOCK)
    (tmp_path / old / block).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    (tmp_path / old / block).write_bytes(b"x" * 1008)
    (tmp_path / "README").write_text("mine")
    cache = DiskCache(tmp_path, CAPACITY, block_size=BLOCK)
    cache.scan()
    assert not (tmp_path / old).exists()
    assert (tmp_path / "README").exists()
    assert cache.usage() == ENTRY
    assert cache.get(key, 0, BLOCK) == b"x" * BLOCK


def test_checksum_has_zlib_values() -> None:
    import zlib

    data = os.urandom(1 << 20)
    # vars(): _crc32 is the private pick between isal and zlib, not part of the module API.
    assert vars(disk_module)["_crc32"](data) == zlib.crc32(data)


def test_dropped_caches_leak_no_descriptors(tmp_path: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    DiskCache(tmp_path, CAPACITY, block_size=BLOCK).put(AssetKey("v", "a", BLOCK), 0, b"x" * BLOCK)
    before = open_fds()
    for _ in range(50):
        cache = DiskCache(tmp_path, CAPACITY, block_size=BLOCK)
        assert cache.get(AssetKey("v", "a", BLOCK), 0, BLOCK) == b"x" * BLOCK
        del cache
    assert open_fds() <= before + 1
