"""DiskCache on its own: layout, validation, LRU eviction, persistence, permissions."""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from cometfs.model import AssetKey
from cometfs.reader import disk as disk_module
from cometfs.reader.disk import _EMPTY_GRACE_SECONDS, DiskCache, _Geometry

BLOCK = 1000
HEADER = 20  # magic CFA3, asset size, block size
RECORD = 16  # magic CFB3, CRC-32, last use in ns: what a present block costs besides its bytes
ENTRY = BLOCK + RECORD  # bytes one full block is counted for
PAGE = 4096

KEY = AssetKey("version-1", "asset-1", 10 * BLOCK)
OTHER = AssetKey("version-1", "asset-2", 10 * BLOCK)


class Record(NamedTuple):
    crc: int
    last_use: int
    length: int


def block(n: int, fill: int | None = None) -> bytes:
    return bytes([(fill if fill is not None else n) % 256]) * BLOCK


def record_at(index: int) -> int:
    """Offset of block `index`'s record in its asset file."""
    return HEADER + index * RECORD


def data_at(key: AssetKey, index: int, block_size: int = BLOCK) -> int:
    """Offset of block `index`'s bytes: the table rounded up to a page, then whole blocks."""
    table_end = HEADER + -(-key.size // block_size) * RECORD
    return -(-table_end // PAGE) * PAGE + index * block_size


def asset_files(root: Path) -> list[Path]:
    return sorted((root / "v3").iterdir())


def only_file(root: Path) -> Path:
    (path,) = asset_files(root)
    return path


def records(path: Path) -> dict[int, Record]:
    """The blocks an asset file holds by index, read from its header and record table."""
    with path.open("rb") as f:
        magic, size, block_size = struct.unpack(">4sQQ", f.read(HEADER))
        assert magic == b"CFA3"
        table = f.read(-(-size // block_size) * RECORD)
    return {
        index: Record(crc, last_use, min(block_size, size - index * block_size))
        for index, (magic, crc, last_use) in enumerate(struct.iter_unpack(">4sIq", table))
        if magic == b"CFB3"
    }


def stored(root: Path) -> list[tuple[Path, int]]:
    """(asset file, index) of every block the directory holds."""
    return [(path, index) for path in asset_files(root) for index in records(path)]


def on_disk(root: Path) -> int:
    """Bytes of blocks and records the directory holds, as the capacity counts them."""
    return sum(r.length + RECORD for path in asset_files(root) for r in records(path).values())


def read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def write_at(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def test_put_then_get_round_trips(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 3, block(3))
    assert cache.get(KEY, 3, BLOCK) == block(3)
    assert cache.get(KEY, 4, BLOCK) is None
    assert cache.get(OTHER, 3, BLOCK) is None
    assert cache.usage() == ENTRY


def test_short_last_block(tmp_path: Path) -> None:
    key = AssetKey("version-1", "short", 9 * BLOCK + 4)
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    cache.put(key, 9, b"tail")
    assert cache.get(key, 9, 4) == b"tail"
    assert cache.usage() == 4 + RECORD


def test_a_block_that_does_not_fit_the_asset_is_not_stored(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 9, b"tail")  # block 9 of KEY is a full block
    cache.put(KEY, 0, block(0) + b"x")
    cache.put(KEY, 10, block(10))  # past the end of the asset
    assert cache.usage() == 0
    assert stored(tmp_path) == []
    assert cache.get(KEY, 9, 4) is None
    assert cache.get(KEY, 10, BLOCK) is None
    empty = AssetKey("version-1", "empty", 0)
    cache.put(empty, 0, b"")  # an empty asset has no block 0
    assert cache.usage() == 0 and not cache.holds(empty, 0)


def test_layout_is_one_sparse_file_per_asset(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    for i in (0, 4):
        cache.put(KEY, i, block(i))
    cache.put(OTHER, 0, block(9))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "v3"]
    assert len(asset_files(tmp_path)) == 2
    assert all(re.fullmatch(r"[0-9a-f]{32}", p.name) for p in asset_files(tmp_path))
    path = cache._asset_path(KEY)
    assert struct.unpack(">4sQQ", read_at(path, 0, HEADER)) == (b"CFA3", 10 * BLOCK, BLOCK)
    assert set(records(path)) == {0, 4}
    assert read_at(path, record_at(1), RECORD) == bytes(RECORD), "absent blocks: zeros"
    for i in (0, 4):
        assert read_at(path, data_at(KEY, i), BLOCK) == block(i)
    assert path.stat().st_size == data_at(KEY, 4) + BLOCK


def test_blocks_persist_across_instances(tmp_path: Path) -> None:
    DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK).put(KEY, 0, block(0))
    again = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    again.scan()
    assert again.usage() == ENTRY
    assert again.holds(KEY, 0)
    assert again.get(KEY, 0, BLOCK) == block(0)


def test_other_block_size_never_sees_the_blocks(tmp_path: Path) -> None:
    DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK).put(KEY, 1, block(1))
    other = DiskCache(tmp_path, 100 * ENTRY, block_size=2 * BLOCK)
    assert other.get(KEY, 1, BLOCK) is None
    assert other.get(KEY, 0, 2 * BLOCK) is None


def test_permissions_are_private(tmp_path: Path) -> None:
    root = tmp_path / "nested" / "cache"
    cache = DiskCache(root, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    path = only_file(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def flip_data_bit(path: Path, record: int, data: int) -> None:
    write_at(path, data + 17, bytes([read_at(path, data + 17, 1)[0] ^ 1]))


def flip_crc_bit(path: Path, record: int, data: int) -> None:
    write_at(path, record + 4, bytes([read_at(path, record + 4, 1)[0] ^ 1]))


def truncate_into_data(path: Path, record: int, data: int) -> None:
    os.truncate(path, data + 100)


def zero_data(path: Path, record: int, data: int) -> None:
    write_at(path, data, bytes(BLOCK))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(flip_data_bit, id="flipped-data-bit"),
        pytest.param(flip_crc_bit, id="flipped-crc-bit"),
        pytest.param(truncate_into_data, id="truncated-into-data"),
        pytest.param(zero_data, id="zeroed-data"),
    ],
)
def test_corrupt_block_is_dropped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path, int, int], None]
) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    cache.put(KEY, 9, block(7))  # the last block: a truncation cuts into it alone
    path = only_file(tmp_path)
    damage(path, record_at(9), data_at(KEY, 9))
    with caplog.at_level(logging.WARNING, logger="cometfs.reader.disk"):
        assert cache.get(KEY, 9, BLOCK) is None
        assert cache.get(KEY, 9, BLOCK) is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert read_at(path, record_at(9), RECORD) == bytes(RECORD), "its record is cleared"
    assert not cache.holds(KEY, 9)
    assert cache.usage() == ENTRY
    assert cache.get(KEY, 0, BLOCK) == block(0), "the other block of the file is kept"
    again = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    again.scan()
    assert again.usage() == ENTRY


def test_wrong_expected_length_is_a_miss_that_keeps_the_block(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    with caplog.at_level(logging.WARNING, logger="cometfs.reader.disk"):
        assert cache.get(KEY, 0, BLOCK - 1) is None
        assert cache.get(KEY, 0, BLOCK + 1) is None
    assert not caplog.records
    assert cache.usage() == ENTRY
    assert cache.get(KEY, 0, BLOCK) == block(0)


def test_file_deleted_behind_our_back_is_a_miss(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    only_file(tmp_path).unlink()  # as another process's eviction would
    assert cache.get(KEY, 0, BLOCK) is None
    assert not cache.holds(KEY, 0)
    cache.clear()  # any later measurement books the directory as it is
    assert cache.usage() == 0


def test_a_block_evicted_by_another_instance_while_read_is_a_miss_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(5))  # not zeros: a freed block reads as zeros
    cache.put(KEY, 1, block(1))
    path = only_file(tmp_path)
    other = DiskCache(tmp_path, ENTRY, block_size=BLOCK)  # its scan evicts block 0, the oldest
    real_pread = os.pread
    evicted: list[int] = []

    def pread(fd: int, length: int, offset: int) -> bytes:
        if offset == data_at(KEY, 0) and not evicted:
            evicted.append(offset)
            other.scan()  # after our read of the record, before our read of the bytes
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    with caplog.at_level(logging.WARNING, logger="cometfs.reader.disk"):
        assert cache.get(KEY, 0, BLOCK) is None
    monkeypatch.undo()
    assert evicted, "the other instance evicted the block in the middle of the read"
    assert not caplog.records
    assert set(records(path)) == {1}
    assert not cache.holds(KEY, 0)
    assert DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK).usage() == ENTRY, "not unbooked twice"
    assert cache.get(KEY, 1, BLOCK) == block(1)


def test_eviction_keeps_usage_within_capacity_and_drops_least_recently_used(
    tmp_path: Path,
) -> None:
    cache = DiskCache(tmp_path, 3 * ENTRY, block_size=BLOCK)
    for i in range(3):
        cache.put(KEY, i, block(i))
    assert cache.get(KEY, 0, BLOCK) == block(0)  # 0 is now the most recently used
    cache.put(KEY, 3, block(3))
    assert cache.usage() == 3 * ENTRY
    assert cache.get(KEY, 1, BLOCK) is None  # the least recently used went
    for i in (0, 2, 3):
        assert cache.get(KEY, i, BLOCK) == block(i)
    assert sorted(index for _, index in stored(tmp_path)) == [0, 2, 3]


def test_eviction_gives_the_bytes_back_to_the_file_system(tmp_path: Path) -> None:
    size = 64 * 1024  # blocks of many file-system blocks: the freed space is plain to see
    first = AssetKey("v", "first", 2 * size)
    second = AssetKey("v", "second", 2 * size)
    cache = DiskCache(tmp_path, 2 * (size + RECORD), block_size=size)
    cache.put(first, 0, b"0" * size)
    cache.put(first, 1, b"1" * size)
    path = only_file(tmp_path)
    before = os.stat(path).st_blocks * 512
    cache.put(second, 0, b"2" * size)  # evicts block 0 of `first`, the least recently used
    assert set(records(path)) == {1}
    assert os.stat(path).st_blocks * 512 <= before - size
    assert read_at(path, data_at(first, 0, size), size) == bytes(size)
    assert read_at(path, data_at(first, 1, size), size) == b"1" * size
    cache.put(second, 1, b"3" * size)  # evicts block 1 of `first`: its file is left empty
    assert not path.exists()
    assert cache.usage() == on_disk(tmp_path) == 2 * (size + RECORD)


def test_many_puts_never_exceed_capacity(tmp_path: Path) -> None:
    key = AssetKey("version-1", "big-1", 40 * BLOCK)
    other = AssetKey("version-1", "big-2", 40 * BLOCK)
    cache = DiskCache(tmp_path, 5 * ENTRY + 3, block_size=BLOCK)
    for i in range(40):
        cache.put(key if i % 2 else other, i, block(i))
        assert cache.usage() <= cache.capacity
        assert on_disk(tmp_path) == cache.usage()
    assert len(stored(tmp_path)) == 5


def test_rewriting_a_block_does_not_double_count(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    cache.put(KEY, 0, block(0))
    assert cache.usage() == ENTRY
    assert DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK).usage() == ENTRY


def test_block_larger_than_capacity_is_not_stored(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, BLOCK, block_size=BLOCK)  # no room for the record
    cache.put(KEY, 0, block(0))
    assert cache.usage() == 0
    assert cache.get(KEY, 0, BLOCK) is None


def set_last_use(path: Path, index: int, ns: int) -> None:
    write_at(path, record_at(index) + 8, struct.pack(">q", ns))


def test_recency_survives_a_restart(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    for i in range(3):
        cache.put(KEY, i, block(i))
    path = only_file(tmp_path)
    # Deterministic last-use times: block 1 oldest, then 2, then 0.
    for ns, index in enumerate((1, 2, 0), start=1):
        set_last_use(path, index, ns * 1_000_000)
    smaller = DiskCache(tmp_path, 2 * ENTRY, block_size=BLOCK)  # remount with a lower limit
    smaller.scan()
    assert smaller.usage() == 2 * ENTRY
    assert smaller.get(KEY, 1, BLOCK) is None
    assert smaller.get(KEY, 0, BLOCK) == block(0)
    assert smaller.get(KEY, 2, BLOCK) == block(2)


def test_get_refreshes_the_persistent_last_use(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    cache.put(KEY, 1, block(1))
    path = only_file(tmp_path)
    set_last_use(path, 0, 1000)
    set_last_use(path, 1, 1000)
    start = time.time_ns()
    assert cache.get(KEY, 0, BLOCK) == block(0)
    assert records(path)[0].last_use >= start
    assert records(path)[1].last_use == 1000, "only the block read is refreshed"


def plant(root: Path, name: str, content: bytes, mtime: float | None = None) -> Path:
    path = root / "v3" / name
    path.write_bytes(content)
    path.chmod(0o600)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def header(size: int, block_size: int, magic: bytes = b"CFA3") -> bytes:
    return struct.pack(">4sQQ", magic, size, block_size)


def test_scan_removes_empty_asset_files_past_the_grace_and_keeps_fresh_ones(
    tmp_path: Path,
) -> None:
    """A file with no block yet may be another process's write about to happen."""
    cache = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    old = time.time() - 2 * _EMPTY_GRACE_SECONDS
    no_blocks = header(10 * BLOCK, BLOCK) + bytes(10 * RECORD)
    gone = [plant(tmp_path, "a" * 32, b"", old), plant(tmp_path, "b" * 32, no_blocks, old)]
    kept = [plant(tmp_path, "c" * 32, b""), plant(tmp_path, "d" * 32, no_blocks)]
    again = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    again.scan()
    assert [path.exists() for path in gone] == [False, False]
    assert [path.exists() for path in kept] == [True, True]
    assert again.usage() == ENTRY
    assert again.get(KEY, 0, BLOCK) == block(0)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(header(10 * BLOCK, BLOCK, b"CFB2") + bytes(10 * RECORD), id="wrong-magic"),
        pytest.param(header(10 * BLOCK, BLOCK)[: HEADER - 1], id="short-header"),
        pytest.param(header(10 * BLOCK, 0), id="zero-block-size"),
    ],
)
def test_scan_deletes_an_asset_file_with_a_bad_header(tmp_path: Path, content: bytes) -> None:
    cache = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    bad = plant(tmp_path, "e" * 32, content)  # fresh: no grace for a file that is not ours
    again = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    again.scan()
    assert not bad.exists()
    assert again.usage() == ENTRY
    assert again.get(KEY, 0, BLOCK) == block(0)


def test_unrelated_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("mine")
    cache = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    (tmp_path / "v3" / "notes.txt").write_text("mine too")
    cache.put(KEY, 0, block(0))
    cache.clear()
    assert (tmp_path / "README").read_text() == "mine"
    assert [p.name for p in asset_files(tmp_path)] == ["notes.txt"]
    assert cache.usage() == 0
    assert cache.get(KEY, 0, BLOCK) is None


def test_concurrent_threads_keep_the_index_consistent(tmp_path: Path) -> None:
    key = AssetKey("version-1", "asset-30", 30 * BLOCK)
    cache = DiskCache(tmp_path, 20 * ENTRY, block_size=BLOCK)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for i in range(60):
                index = (seed * 7 + i) % 30
                cache.put(key, index, block(index))
                got = cache.get(key, (index * 3) % 30, BLOCK)
                assert got is None or got == block((index * 3) % 30)
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not errors
    assert cache.usage() <= cache.capacity
    held = stored(tmp_path)
    assert held
    restarted = DiskCache(tmp_path, 20 * ENTRY, block_size=BLOCK)
    for _, index in held:
        assert restarted.get(key, index, BLOCK) == block(index)


def test_rejects_negative_capacity(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DiskCache(tmp_path, -1)


def test_discard_drops_one_asset_only(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    for i in range(3):
        cache.put(KEY, i, block(i))
    cache.put(OTHER, 0, block(9))
    cache.discard(KEY)
    assert cache.usage() == ENTRY
    assert all(cache.get(KEY, i, BLOCK) is None for i in range(3))
    assert cache.get(OTHER, 0, BLOCK) == block(9)
    assert stored(tmp_path) == [(cache._asset_path(OTHER), 0)]


def test_holds_follows_puts_evictions_and_discards(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 3 * 1024, block_size=1024)
    key = AssetKey("v", "held", 10 * 1024)
    cache.scan()
    assert not cache.holds(key, 0)
    cache.put(key, 0, b"a" * 1024)
    assert cache.holds(key, 0) and not cache.holds(key, 1)
    for index in (1, 2, 3):  # the capacity fits two blocks with their records
        cache.put(key, index, b"b" * 1024)
    assert not cache.holds(key, 0), "evicted blocks are no longer held"
    assert cache.holds(key, 3)
    cache.discard(key)
    assert not any(cache.holds(key, index) for index in range(4))


def test_put_many_stores_the_blocks_it_can_and_books_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DiskCache(tmp_path / "c", 100 * ENTRY, block_size=BLOCK)
    real_write = disk_module._write_block

    def write(fd: int, geometry: _Geometry, index: int, view: memoryview) -> None:
        if index == 1:  # OTHER's block 1, the only block 1 of the batch
            raise OSError(28, "No space left on device")
        real_write(fd, geometry, index, view)

    monkeypatch.setattr(disk_module, "_write_block", write)
    errors = cache.put_many([(KEY, 0, block(0)), (OTHER, 1, block(1)), (OTHER, 2, block(2))])
    assert [e.errno for e in errors] == [28]
    assert cache.get(KEY, 0, BLOCK) == block(0)
    assert cache.get(OTHER, 1, BLOCK) is None
    assert cache.get(OTHER, 2, BLOCK) == block(2)
    assert cache.usage() == 2 * ENTRY
    assert DiskCache(tmp_path / "c", 100 * ENTRY, block_size=BLOCK).usage() == 2 * ENTRY
    assert on_disk(tmp_path / "c") == 2 * ENTRY


def test_put_many_writes_and_books_a_block_given_twice_once(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", 100 * ENTRY, block_size=BLOCK)
    assert cache.put_many([(KEY, 0, block(0)), (KEY, 0, block(0))]) == []
    assert cache.usage() == ENTRY
    assert len(stored(tmp_path / "c")) == 1


def test_put_many_skips_a_batch_that_would_eat_the_free_space_reserve(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", 100 * ENTRY, block_size=BLOCK, reserve_bytes=1 << 62)
    assert cache.put_many([(KEY, 0, block(0)), (KEY, 1, block(1))]) == []
    assert cache.skipped_low_space == 2
    assert stored(tmp_path / "c") == []
    assert cache.usage() == 0
